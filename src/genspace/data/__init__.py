"""Data: 2-D toy distributions and image loaders (text corpora live in ``genspace.data.text``).

- :mod:`genspace.data.toy2d`: ``make_toy(name, n, generator=...)`` for moons, circles, swissroll,
  8gaussians, 25gaussians, checkerboard, pinwheel, 2spirals, rings (each scaled to about unit
  std), and ``toy_density`` for the two Gaussian-mixture toys.
- :mod:`genspace.data.images`: digits, IDX (MNIST), CIFAR-10 batches (restricted unpickling),
  image folders, numpy files; ``to_unit_range`` / ``dequantize`` / ``to_uint8``.
"""

from genspace.data.images import (
    CIFAR10_CLASSES,
    DIGITS_LEVELS,
    ImageData,
    dequantize,
    dequantize_centered,
    load_cifar10,
    load_digits,
    load_idx,
    load_image_folder,
    load_mnist,
    load_numpy,
    read_cifar_batch,
    to_uint8,
    to_unit_range,
)
from genspace.data.toy2d import (
    make_2spirals,
    make_8gaussians,
    make_25gaussians,
    make_checkerboard,
    make_circles,
    make_moons,
    make_pinwheel,
    make_rings,
    make_swissroll,
    make_toy,
    toy_density,
    toy_names,
)

__all__ = [
    "make_toy",
    "toy_names",
    "toy_density",
    "make_moons",
    "make_circles",
    "make_swissroll",
    "make_8gaussians",
    "make_25gaussians",
    "make_checkerboard",
    "make_pinwheel",
    "make_2spirals",
    "make_rings",
    "ImageData",
    "CIFAR10_CLASSES",
    "DIGITS_LEVELS",
    "load_digits",
    "load_idx",
    "load_mnist",
    "read_cifar_batch",
    "load_cifar10",
    "load_image_folder",
    "load_numpy",
    "to_unit_range",
    "dequantize",
    "dequantize_centered",
    "to_uint8",
]

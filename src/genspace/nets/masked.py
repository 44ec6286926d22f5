"""Masked networks for autoregressive models (architecture only): MADE and the gated PixelCNN.

MADE (Germain et al. 2015, "MADE: Masked Autoencoder for Distribution Estimation", §4 "Masked autoencoders")
    Every unit carries a degree. Input d has degree m⁰(d) ∈ {1, …, D}, its position in the
    ordering; a unit k of hidden layer l has m^l(k) drawn uniformly from
    {min_k' m^{l−1}(k'), …, D − 1}. The masks are

        hidden:  M^{W^l}_{k, k'} = 1[m^l(k) ≥ m^{l−1}(k')]
        output:  M^V_{d, k}      = 1[m⁰(d) > m^L(k)]

    so output d is a function of the inputs of degree < m⁰(d) only (the strict inequality at the
    output), i.e. of the dimensions before d in the ordering. :class:`MADENet` holds ``n_masks``
    such mask sets (orderings and/or hidden degrees drawn from a seeded generator: the paper's
    order-agnostic and connectivity-agnostic training) and evaluates any one of them.

Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders", §2)
    Two stacks remove the blind spot of the masked 3×3 PixelCNN. Here the vertical stack at row
    i sees the input rows strictly above i at every column of its window (its receptive field
    grows left AND right), and the horizontal stack at (i, j) sees the current row strictly left
    of j plus the vertical stack at (i, j). The causal windows are built from plain convolutions
    on padded inputs (equivalent to masking the kernels; Fig. 1/2 of the paper):

        :class:`VerticalStackConv`   "A": rows i − ⌊k/2⌋ … i − 1,  "B": rows i − ⌊k/2⌋ … i
        :class:`HorizontalStackConv` "A": cols j − ⌊k/2⌋ … j − 1,  "B": cols j − ⌊k/2⌋ … j

    Mask A is used in the first layer (nothing sees pixel (i, j) itself), mask B afterwards
    (features at (i, j) already depend only on pixels before (i, j)). Each layer is gated,
    y = tanh(W_f ∗ x + V_f c) ⊙ σ(W_g ∗ x + V_g c) (Eq. 2 and 4, c a class embedding), the
    vertical pre-activations feed the horizontal stack through a 1×1 convolution, and the
    horizontal stack is residual (except the first layer, whose input is the image itself) with
    skip connections summed into the output head.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------------------- MADE


def made_degrees(
    dim: int, hidden: int, depth: int, *, generator: torch.Generator, random_order: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrees of one MADE mask set (Germain et al. 2015, §4).

    Returns:
        input_degrees: (dim,) int64, a permutation of 1…dim (the natural order 1, 2, …, dim
            unless ``random_order``); input d is the m⁰(d)-th dimension of the ordering.
        hidden_degrees: (depth, hidden) int64; layer l's degrees uniform on
            {min(min_k m^{l−1}(k), dim − 1), …, dim − 1} (the min with dim − 1 only matters for
            dim = 1, where every hidden unit is cut from the single output).
    """
    if random_order:
        input_degrees = torch.randperm(dim, generator=generator) + 1
    else:
        input_degrees = torch.arange(1, dim + 1)
    layers, low = [], 1
    for _ in range(depth):
        low = min(low, dim - 1)
        deg = torch.randint(low, max(dim - 1, low) + 1, (hidden,), generator=generator)
        layers.append(deg)
        low = int(deg.min())
    return input_degrees, torch.stack(layers)


def made_masks(input_degrees: torch.Tensor, hidden_degrees: torch.Tensor, params_per_dim: int) -> list[torch.Tensor]:
    """The 0/1 masks of one MADE mask set, one per layer, each (out_features, in_features) bool.

    hidden layer l: 1[m^l(k) ≥ m^{l−1}(k')]; output: 1[m⁰(d) > m^L(k)] (strict), with
    the ``params_per_dim`` output units of dimension d (laid out d-major: unit d·P + p) all of
    degree m⁰(d).
    """
    masks, prev = [], input_degrees
    for deg in hidden_degrees:
        masks.append(deg[:, None] >= prev[None, :])  # (H, H_prev)
        prev = deg
    out_deg = input_degrees.repeat_interleave(params_per_dim)  # (D·P,)
    masks.append(out_deg[:, None] > prev[None, :])  # (D·P, H)
    return masks


class MaskedLinear(nn.Linear):
    """y = x (W ⊙ M)ᵀ + b with the mask M (out_features, in_features) given at call time."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.linear(x, self.weight * mask.to(self.weight.dtype), self.bias)


class MADENet(nn.Module):
    """The MADE network: x (B, D) → (B, D, P) parameters of the D conditionals.

    Output ``[:, d, :]`` of mask set k depends only on the inputs j with
    ``input_degrees[k, j] < input_degrees[k, d]`` (and on the class label, which every output sees).

    Args:
        dim: D, the number of dimensions.
        hidden: width of each hidden layer.
        depth: number of hidden layers (ReLU).
        params_per_dim: P, output parameters per dimension.
        n_masks: mask sets held (ordering and hidden degrees each), drawn at construction.
        resample_order: each mask set gets its own random ordering (order-agnostic training);
            otherwise all use the natural order 1…D.
        resample_connectivity: each mask set draws its own hidden degrees (connectivity-agnostic
            training); otherwise all share the degrees of the first.
        seed: seed of the generator that draws orderings and degrees.
        n_classes: class-conditional if set: a label embedding (row ``n_classes`` = the null
            class) is added to the first hidden layer and to the output (the first dimension in
            the ordering sees the label only through the latter).
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        depth: int,
        params_per_dim: int,
        *,
        n_masks: int = 1,
        resample_order: bool = False,
        resample_connectivity: bool = False,
        seed: int = 0,
        n_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("params_per_dim", params_per_dim), ("n_masks", n_masks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MADENet: {name} must be a positive integer, got {value!r}")
        if n_masks > 1 and not (resample_order or resample_connectivity):
            raise ValueError(
                f"MADENet: n_masks={n_masks} identical masks; set resample_order and/or "
                "resample_connectivity to make an ensemble (or n_masks=1)"
            )
        self.dim, self.params_per_dim, self.n_masks = dim, params_per_dim, n_masks
        g = torch.Generator().manual_seed(int(seed))
        first = made_degrees(dim, hidden, depth, generator=g, random_order=resample_order)
        inputs, hiddens = [first[0]], [first[1]]
        for _ in range(1, n_masks):
            order, deg = made_degrees(dim, hidden, depth, generator=g, random_order=resample_order)
            inputs.append(order if resample_order else first[0])
            hiddens.append(deg if resample_connectivity else first[1])
        self.register_buffer("input_degrees", torch.stack(inputs))  # (n_masks, D)
        self.register_buffer("hidden_degrees", torch.stack(hiddens))  # (n_masks, depth, H)
        sizes = [dim] + [hidden] * depth
        self.hidden_layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = MaskedLinear(hidden, dim * params_per_dim)
        self.n_classes = n_classes
        if n_classes is not None:
            self.label_hidden = nn.Embedding(n_classes + 1, hidden)
            self.label_out = nn.Embedding(n_classes + 1, dim * params_per_dim)
            nn.init.zeros_(self.label_out.weight)

    def order(self, k: int = 0) -> torch.Tensor:
        """(D,) the dimensions of mask set k in the order they are generated."""
        return torch.argsort(self.input_degrees[k])

    def masks(self, k: int = 0) -> list[torch.Tensor]:
        """The masks of mask set k (see :func:`made_masks`)."""
        return made_masks(self.input_degrees[k], self.hidden_degrees[k], self.params_per_dim)

    def forward(self, x: torch.Tensor, mask_index: int = 0, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, D) → (B, D, P) with mask set ``mask_index``; class_labels (B,) long (conditional nets)."""
        masks = self.masks(mask_index)
        if self.n_classes is not None and class_labels is None:  # the null class
            class_labels = torch.full((x.shape[0],), self.n_classes, dtype=torch.long, device=x.device)
        h = x
        for l, layer in enumerate(self.hidden_layers):
            h = layer(h, masks[l])
            if l == 0 and self.n_classes is not None:
                h = h + self.label_hidden(class_labels)
            h = torch.relu(h)
        out = self.out(h, masks[-1])  # (B, D·P)
        if self.n_classes is not None:
            out = out + self.label_out(class_labels)
        return out.reshape(x.shape[0], self.dim, self.params_per_dim)  # (B, D, P)


# ------------------------------------------------------------------------------ gated PixelCNN

Mask = Literal["A", "B"]


def _check_kernel(kernel: int, mask: str, what: str) -> None:
    if mask not in ("A", "B"):
        raise ValueError(f"{what}: mask must be 'A' or 'B', got {mask!r}")
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"{what}: kernel must be an odd positive integer, got {kernel!r}")
    if mask == "A" and kernel < 3:
        raise ValueError(f"{what}: a mask-A kernel must be >= 3 (size 1 would see nothing), got {kernel}")


class VerticalStackConv(nn.Module):
    """Output at (i, j) sees input rows i − ⌊k/2⌋ … i − 1 ("A") or … i ("B"), columns j ± ⌊k/2⌋.

    (B, C_in, H, W) → (B, C_out, H, W). The kernel is (⌊k/2⌋, k) for "A" and (⌊k/2⌋ + 1, k) for
    "B", applied to the input padded with ⌊k/2⌋ rows on top and ⌊k/2⌋ columns on each side.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, mask: Mask) -> None:
        super().__init__()
        _check_kernel(kernel, mask, "VerticalStackConv")
        self.half, self.mask = kernel // 2, mask
        rows = self.half if mask == "A" else self.half + 1
        self.conv = nn.Conv2d(c_in, c_out, (rows, kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        y = self.conv(F.pad(x, (self.half, self.half, self.half, 0)))  # (B, C_out, H + [A], W)
        return y[:, :, :h]  # "A": output row o used padded rows o … o+⌊k/2⌋−1 = input rows o−⌊k/2⌋ … o−1


class HorizontalStackConv(nn.Module):
    """Output at (i, j) sees input (i, j − ⌊k/2⌋ … j − 1) ("A") or (i, … j) ("B").

    (B, C_in, H, W) → (B, C_out, H, W); kernel (1, ⌊k/2⌋) for "A", (1, ⌊k/2⌋ + 1) for "B", on
    the input padded with ⌊k/2⌋ columns on the left.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, mask: Mask) -> None:
        super().__init__()
        _check_kernel(kernel, mask, "HorizontalStackConv")
        self.half = kernel // 2
        cols = self.half if mask == "A" else self.half + 1
        self.conv = nn.Conv2d(c_in, c_out, (1, cols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[3]
        return self.conv(F.pad(x, (self.half, 0, 0, 0)))[:, :, :, :w]


def _gate(pre: torch.Tensor) -> torch.Tensor:
    """tanh(f) ⊙ σ(g) with (f, g) the two channel halves: (B, 2C, H, W) → (B, C, H, W) (Eq. 2)."""
    f, g = pre.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated PixelCNN layer (van den Oord et al. 2016, Fig. 2) on (vertical, horizontal) maps.

    v' = gate(V ∗ v + c_v);  h_pre = H ∗ h + 1×1(V ∗ v) + c_h;  g = gate(h_pre);
    h' = h + 1×1(g) (residual; not in the first layer, whose h is the image), skip = 1×1(g).
    """

    def __init__(self, c_in: int, channels: int, kernel: int, mask: Mask, n_classes: Optional[int]) -> None:
        super().__init__()
        self.residual = mask == "B"
        self.v_conv = VerticalStackConv(c_in, 2 * channels, kernel, mask)
        self.h_conv = HorizontalStackConv(c_in, 2 * channels, kernel, mask)
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.skip = nn.Conv2d(channels, channels, 1)
        if n_classes is not None:  # V_f, V_g of Eq. 4: a per-class bias of both gates
            self.label_v = nn.Embedding(n_classes + 1, 2 * channels)
            self.label_h = nn.Embedding(n_classes + 1, 2 * channels)

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: Optional[torch.Tensor]):
        v_pre = self.v_conv(v)  # (B, 2C, H, W), rows above only
        h_pre = self.h_conv(h) + self.v_to_h(v_pre)  # (B, 2C, H, W)
        if labels is not None:
            v_pre = v_pre + self.label_v(labels)[:, :, None, None]
            h_pre = h_pre + self.label_h(labels)[:, :, None, None]
        g = _gate(h_pre)  # (B, C, H, W)
        h_new = self.h_out(g)
        if self.residual:
            h_new = h + h_new
        return _gate(v_pre), h_new, self.skip(g)


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN: x (B, 1, H, W) float → logits (B, n_levels, H, W).

    The logits at pixel (i, j) depend only on pixels before (i, j) in raster order. Their
    receptive field holds the row-part j − R_h … j − 1 of row i and rows i − R_v … i − 1 at
    columns j − R_v … j + R_v (clipped to the image), with R_v = R_h = ⌊k₁/2⌋ + (n_layers − 1)·⌊k/2⌋
    (k₁ = ``first_kernel``, k = ``kernel``): no blind spot, but a finite field.

    Args:
        n_levels: categories per pixel (the output channels).
        channels: feature channels of both stacks.
        n_layers: gated layers (the first with mask A, the others with mask B).
        first_kernel: odd kernel size of the first layer (the paper: 7).
        kernel: odd kernel size of the other layers (the paper: 3).
        head_hidden: channels of the 1×1 ReLU output head.
        n_classes: class-conditional if set (row ``n_classes`` = the null class).
    """

    def __init__(
        self,
        n_levels: int,
        *,
        channels: int = 64,
        n_layers: int = 6,
        first_kernel: int = 7,
        kernel: int = 3,
        head_hidden: int = 128,
        n_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_levels", n_levels), ("channels", channels), ("n_layers", n_layers), ("head_hidden", head_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GatedPixelCNN: {name} must be a positive integer, got {value!r}")
        self.n_levels, self.n_classes = n_levels, n_classes
        self.layers = nn.ModuleList(
            [GatedLayer(1, channels, first_kernel, "A", n_classes)]
            + [GatedLayer(channels, channels, kernel, "B", n_classes) for _ in range(n_layers - 1)]
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, head_hidden, 1), nn.ReLU(), nn.Conv2d(head_hidden, n_levels, 1))

    def forward(self, x: torch.Tensor, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        labels = class_labels if self.n_classes is not None else None
        if self.n_classes is not None and labels is None:  # the null class
            labels = torch.full((x.shape[0],), self.n_classes, dtype=torch.long, device=x.device)
        v, h, skips = x, x, 0
        for layer in self.layers:
            v, h, skip = layer(v, h, labels)
            skips = skips + skip
        return self.head(skips)  # (B, n_levels, H, W)

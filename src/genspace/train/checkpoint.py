"""Checkpoints as folders of safetensors + JSON, written atomically; pickle is never loaded.

A checkpoint is a folder ``<out_dir>/ckpt-<step:08d>/`` holding

- ``config.json``                the run's configuration (a JSON object);
- ``model.safetensors``          the model's ``state_dict``;
- ``ema.safetensors``            the EMA model's ``state_dict`` (when there is one);
- ``trainer_state.safetensors``  what resuming needs: the optimizers' states and the trainer's
                                 state (step counters, RNG states as uint8 tensors, ...). Nested
                                 structures are flattened into named tensors; the structure and
                                 every non-tensor value are a JSON description stored in the
                                 safetensors metadata field;
- ``COMPLETE``                   written last: JSON with the byte size and SHA-256 of every file.

The folder is first written as ``.tmp-<name>`` and then renamed into place with ``os.replace``
(atomic on POSIX), so a folder named ``ckpt-*`` is either complete or was damaged afterwards;
:func:`latest_checkpoint` skips folders without a valid ``COMPLETE`` marker or with files of the
wrong size, and :func:`load_checkpoint` also verifies the checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import nn

MARKER = "COMPLETE"
FORMAT = "genspace.checkpoint"
VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
_CKPT_NAME = re.compile(r"^ckpt-(\d+)$")
_TREE_KEY = "genspace.tree"

PathLike = Union[str, os.PathLike]


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors on ``map_location``, nothing applied to a model yet."""

    path: Path
    config: dict  # contents of config.json
    model_state: dict[str, torch.Tensor]  # the model's state_dict
    ema_state: Optional[dict[str, torch.Tensor]]  # the EMA model's state_dict, or None
    trainer_state: Optional[dict]  # {"optimizers": {name: state_dict}, **state}, or None

    @property
    def step(self) -> Optional[int]:
        return None if self.trainer_state is None else self.trainer_state.get("step")


def checkpoint_path(out_dir: PathLike, step: int) -> Path:
    """The folder of the checkpoint after ``step`` training steps: ``out_dir/ckpt-<step:08d>``."""
    return Path(out_dir) / f"ckpt-{int(step):08d}"


# ----------------------------------------------------------------------------- tree <-> tensors


def flatten_tree(tree: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested structure into (JSON description, {name: tensor}).

    Tensors become ``{"__tensor__": name}``; dicts whose keys are not all strings (optimizer
    states are keyed by int) become ``{"__items__": [[key, value], ...]}``; tuples become lists.
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: enc(v, f"{path}/{k}") for k, v in obj.items()}
            return {"__items__": [[k, enc(v, f"{path}/{k}")] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [enc(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise ValueError(
            f"cannot store {type(obj).__name__} at {path!r} in a checkpoint: only tensors, "
            "dicts, lists, tuples, str, int, float, bool and None are allowed"
        )

    return enc(tree, prefix), tensors


def unflatten_tree(desc: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_tree`."""
    if isinstance(desc, dict):
        if "__tensor__" in desc:
            return tensors[desc["__tensor__"]]
        if "__items__" in desc:
            return {k: unflatten_tree(v, tensors) for k, v in desc["__items__"]}
        return {k: unflatten_tree(v, tensors) for k, v in desc.items()}
    if isinstance(desc, list):
        return [unflatten_tree(v, tensors) for v in desc]
    return desc


def _state_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, one storage per tensor (tied weights are cloned: safetensors refuses sharing)."""
    out, seen = {}, set()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(ptr)
        out[name] = t
    return out


def _decode(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors byte string."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return _st_load(data), header.get("__metadata__") or {}


# ----------------------------------------------------------------------------- writing


def _write(path: Path, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: PathLike,
    model: Union[nn.Module, Mapping[str, torch.Tensor]],
    ema: Union[nn.Module, Mapping[str, torch.Tensor], None] = None,
    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
    state: Optional[Mapping[str, Any]] = None,
    config_dict: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a checkpoint folder at ``path`` atomically (see the module doc); returns ``path``.

    Args:
        path: the folder to create, usually :func:`checkpoint_path` ``(out_dir, step)``. An
            existing folder of that name is replaced.
        model, ema: modules or state dicts.
        optimizers: ``{phase name: optimizer}``; stored under ``trainer_state["optimizers"]``.
        state: further resumable state (tensors and JSON values, nested); merged into
            ``trainer_state``. ``trainer_state.safetensors`` is written if this or
            ``optimizers`` is given.
        config_dict: written to ``config.json`` ({} if None).
    """
    path = Path(path)
    state = dict(state or {})
    if "optimizers" in state:
        raise ValueError("state must not hold the key 'optimizers'; pass optimizers= instead")
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{path.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    files = {"config.json": _write(tmp / "config.json", json.dumps(dict(config_dict or {}), indent=2).encode())}
    model_state = model.state_dict() if isinstance(model, nn.Module) else model
    files["model.safetensors"] = _write(tmp / "model.safetensors", _st_save(_state_tensors(model_state)))
    if ema is not None:
        ema_state = ema.state_dict() if isinstance(ema, nn.Module) else ema
        files["ema.safetensors"] = _write(tmp / "ema.safetensors", _st_save(_state_tensors(ema_state)))
    if optimizers is not None or state:
        tree = {"optimizers": {name: opt.state_dict() for name, opt in (optimizers or {}).items()}, **state}
        desc, tensors = flatten_tree(tree)
        data = _st_save(tensors, metadata={_TREE_KEY: json.dumps(desc)})
        files["trainer_state.safetensors"] = _write(tmp / "trainer_state.safetensors", data)
    marker = {"format": FORMAT, "version": VERSION, "files": files}
    _write(tmp / MARKER, json.dumps(marker, indent=2).encode())
    _fsync_dir(tmp)

    trash = parent / f".del-{path.name}"
    if path.exists():
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(path, trash)
    os.replace(tmp, path)
    _fsync_dir(parent)
    if trash.exists():
        shutil.rmtree(trash)
    return path


# ----------------------------------------------------------------------------- finding


def _read_marker(path: Path) -> Optional[dict]:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or not isinstance(marker.get("files"), dict):
        return None
    return marker


def is_complete(path: PathLike) -> bool:
    """True if ``path`` has a valid COMPLETE marker and every file it lists has the listed size."""
    path = Path(path)
    marker = _read_marker(path)
    if marker is None or "model.safetensors" not in marker["files"]:
        return False
    for name, info in marker["files"].items():
        f = path / name
        if not f.is_file() or f.stat().st_size != info.get("size"):
            return False
    return True


def list_checkpoints(out_dir: PathLike) -> list[Path]:
    """Complete checkpoint folders ``ckpt-*`` in ``out_dir``, oldest step first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        m = _CKPT_NAME.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The complete checkpoint of ``out_dir`` with the highest step, or None.

    Folders cut off mid-write (``.tmp-*``, no ``COMPLETE`` marker, truncated files) are skipped.
    """
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def prune_checkpoints(out_dir: PathLike, keep_last: int) -> None:
    """Remove all complete checkpoints of ``out_dir`` but the ``keep_last`` newest."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    for p in list_checkpoints(out_dir)[:-keep_last]:
        trash = p.parent / f".del-{p.name}"
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(p, trash)  # never leave a half-deleted folder that still looks complete
        shutil.rmtree(trash)


def remove_stale(out_dir: PathLike) -> None:
    """Delete leftovers of interrupted writes/removals (``.tmp-ckpt-*``, ``.del-ckpt-*``)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if p.is_dir() and (p.name.startswith(".tmp-ckpt-") or p.name.startswith(".del-ckpt-")):
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- loading


def _refuse_pickle(path: Path) -> None:
    candidates = [path] if not path.is_dir() else sorted(path.iterdir())
    bad = [p.name for p in candidates if p.suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise ValueError(
            f"pickle checkpoints are refused: {path} holds {bad}. Unpickling can run arbitrary "
            "code; genspace loads only checkpoint folders of safetensors + JSON "
            "(model.safetensors, config.json, COMPLETE)."
        )


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Load a checkpoint folder written by :func:`save_checkpoint`; never unpickles anything.

    Raises:
        ValueError: the folder holds pickle files (``.pt``, ``.pth``, ``.pkl``, ``.bin``, ...),
            has no valid ``COMPLETE`` marker (cut off mid-write), or a file's checksum is wrong.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _refuse_pickle(path)
    if not path.is_dir():
        raise ValueError(f"a genspace checkpoint is a folder, got the file {path}")
    marker = _read_marker(path)
    if marker is None:
        raise ValueError(
            f"{path} has no valid {MARKER} marker: the checkpoint was cut off mid-write or is "
            "not a genspace checkpoint"
        )
    blobs = {}
    for name, info in marker["files"].items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"{path}/{MARKER} lists an invalid file name {name!r}")
        f = path / name
        if not f.is_file():
            raise ValueError(f"checkpoint {path} is incomplete: {name} is missing")
        data = f.read_bytes()
        if len(data) != info.get("size") or hashlib.sha256(data).hexdigest() != info.get("sha256"):
            raise ValueError(f"checkpoint {path} is damaged: {name} does not match its checksum")
        blobs[name] = data
    if "model.safetensors" not in blobs or "config.json" not in blobs:
        raise ValueError(f"checkpoint {path} lacks model.safetensors or config.json")

    def tensors(name: str) -> Optional[dict[str, torch.Tensor]]:
        if name not in blobs:
            return None
        return {k: v.to(map_location) for k, v in _decode(blobs[name])[0].items()}

    trainer_state = None
    if "trainer_state.safetensors" in blobs:
        flat, meta = _decode(blobs["trainer_state.safetensors"])
        if _TREE_KEY not in meta:
            raise ValueError(f"{path}/trainer_state.safetensors has no {_TREE_KEY!r} metadata")
        flat = {k: v.to(map_location) if v.dtype != torch.uint8 else v for k, v in flat.items()}
        trainer_state = unflatten_tree(json.loads(meta[_TREE_KEY]), flat)
    return Checkpoint(
        path=path,
        config=json.loads(blobs["config.json"]),
        model_state=tensors("model.safetensors"),
        ema_state=tensors("ema.safetensors"),
        trainer_state=trainer_state,
    )


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str = "model") -> None:
    """``module.load_state_dict(state)`` that names missing/unexpected keys and shape mismatches.

    Raises:
        ValueError: the keys or shapes of ``state`` differ from the module's.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{what} state does not match the {type(module).__name__}: "
            f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}"
        )
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if shapes:
        raise ValueError(f"{what} state has tensors of the wrong shape (checkpoint vs module): {_few(shapes)}")
    module.load_state_dict(state, strict=True)


def _few(names: list[str], k: int = 10) -> str:
    return str(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")

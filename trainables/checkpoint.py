"""Training state on disk without pickle: every tensor in one safetensors file, everything else
(step, history, scheduler state, RNG states, the optimiser's nesting) in one JSON file.

`write_state(folder, payload)` takes any nesting of dicts / lists / tuples / numbers / strings
/ None / tensors (a torch.distributed.checkpoint optimiser state dict, DeepSpeed's per-rank
blob, ...); each tensor goes to safetensors under its dotted path ("optimizer.state.<param>.
exp_avg") and the JSON keeps the structure with a reference in its place. `read_state` rebuilds
the same object: tuples stay tuples, int keys stay ints, inf / nan floats survive. Reading a
checkpoint never runs code (no torch.load of a pickle): a `train_state.pt` from older versions
is refused, not opened.

The two files share an id (JSON "id" = safetensors metadata "id"), written tensors first, JSON
last (each atomically), so a reader never pairs one save's tensors with another's JSON.
"""

from __future__ import annotations

import json
import math
import os
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.errors import InputError
from trainables.io import write_text

STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"
LEGACY_PICKLE = "train_state.pt"  # written by older versions; never loaded (pickle can run code)
FORMAT = "undial-train-state/1"

# Markers in the JSON for what JSON itself cannot hold.
_TENSOR, _TUPLE, _DICT, _FLOAT = "__tensor__", "__tuple__", "__dict__", "__float__"
_MARKERS = (_TENSOR, _TUPLE, _DICT, _FLOAT)


# --------------------------------------------------------------------------------------------
# Structure <-> (JSON skeleton, flat tensors)


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key, n = path or "tensor", 1
        while key in tensors:  # "a.b" as one dict key and as a nesting give the same dotted path
            key, n = f"{path}#{n}", n + 1
        tensors[key] = obj
        return {_TENSOR: key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {_FLOAT: repr(obj)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), path, tensors)
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        def child(k):
            return f"{path}.{k}" if path else str(k)
        if all(isinstance(k, str) for k in obj) and not any(k in _MARKERS for k in obj):
            return {k: _encode(v, child(k), tensors) for k, v in obj.items()}
        return {_DICT: [[_encode(k, f"{child(k)}.key", tensors), _encode(v, child(k), tensors)]
                         for k, v in obj.items()]}
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} at '{path}' (tensors, numbers, "
                    "strings, None, lists, tuples and dicts only)")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (marker, value), = node.items()
        if marker == _TENSOR:
            if value not in tensors:
                raise KeyError(value)
            return tensors[value]
        if marker == _TUPLE:
            return tuple(_decode(v, tensors) for v in value)
        if marker == _DICT:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
        if marker == _FLOAT:
            return float(value)
    return {k: _decode(v, tensors) for k, v in node.items()}


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, no two entries sharing memory (safetensors refuses shared storage: tied
    weights); only the ones that collide are copied."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach()
        if hasattr(t, "full_tensor"):  # a DTensor that was not gathered
            t = t.full_tensor()
        t = t.cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


# --------------------------------------------------------------------------------------------
# RNG states as JSON-able values (numpy's and Python's) and a tensor (torch's)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --------------------------------------------------------------------------------------------
# Files


def write_state(folder: str | Path, payload: dict) -> None:
    """Write `payload` into `folder` (created): STATE_TENSORS, then STATE_JSON."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(payload, "", tensors)
    ident = uuid.uuid4().hex
    tmp = folder / f".{STATE_TENSORS}.tmp"
    try:
        save_file(_storable(tensors), str(tmp), metadata={"id": ident, "format": FORMAT})
        os.replace(tmp, folder / STATE_TENSORS)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_text(folder / STATE_JSON, json.dumps({"format": FORMAT, "id": ident, "tensors": STATE_TENSORS,
                                                "state": skeleton}, allow_nan=False))


def check_folder(folder: str | Path, key: str = "run.resume_from") -> Path:
    """The checkpoint folder's JSON file, or one line naming `key` saying what is wrong.
    Looks at names only: cheap enough for preflight."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{key}: {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{key}: {folder} is a file, not a checkpoint folder")
    if not (folder / STATE_JSON).is_file() or not (folder / STATE_TENSORS).is_file():
        if (folder / LEGACY_PICKLE).exists():
            raise InputError(f"{key}: {folder} holds a pickle checkpoint ({LEGACY_PICKLE}) from an older version; "
                             f"it is not loaded (unpickling can run code): resume from a checkpoint holding "
                             f"{STATE_JSON} + {STATE_TENSORS}")
        raise InputError(f"{key}: {folder} holds no checkpoint ({STATE_JSON} + {STATE_TENSORS})")
    return folder / STATE_JSON


def read_state(folder: str | Path, key: str = "run.resume_from") -> dict:
    """The payload `write_state` wrote, tensors on the CPU; a bad folder -> InputError naming `key`."""
    from safetensors import SafetensorError, safe_open

    json_file = check_folder(folder, key)
    folder = json_file.parent
    try:
        meta = json.loads(json_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{key}: {json_file} is not a readable checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "state" not in meta:
        raise InputError(f"{key}: {json_file} is not a checkpoint of this format ({FORMAT})")
    tensor_file = folder / str(meta.get("tensors", STATE_TENSORS))
    try:
        with safe_open(str(tensor_file), framework="pt", device="cpu") as handle:
            ident = (handle.metadata() or {}).get("id")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{key}: {tensor_file} is not a readable safetensors file "
                         f"({str(exc).splitlines()[0]})") from None
    if ident != meta.get("id"):
        raise InputError(f"{key}: {folder} mixes two saves ({STATE_TENSORS} and {STATE_JSON} differ); "
                         "the checkpoint was half-written")
    try:
        return _decode(meta["state"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{key}: {json_file} is damaged (tensor {exc} missing or malformed entry)") from None

"""Atomic file writes: a reader (or a resumed run after a kill) sees the old file or the new
one, never half of one. The one JSON / YAML / text writer of the project."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


def _atomic(path: str | Path, mode: str, fill) -> Path:
    """fill(fh) writes a temporary file beside path, which then replaces path in one step."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            fill(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, "w", lambda fh: fh.write(text))


def _json_default(value: Any):
    try:
        return float(value)  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(value)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_json_default))


def write_yaml(path: str | Path, data: Any) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_npy(path: str | Path, array) -> Path:
    """A numpy array as .npy (read back with allow_pickle=False), atomically."""
    import numpy as np

    return _atomic(path, "wb", lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))


def cache_root() -> Path:
    """$UNDIAL_CACHE, or ~/.cache/undial: the built demo, cached MAUVE features."""
    return Path(os.environ.get("UNDIAL_CACHE") or os.path.join("~", ".cache", "undial")).expanduser()

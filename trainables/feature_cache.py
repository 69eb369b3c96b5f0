"""The human side of MAUVE, featurised once: the true continuations of the held-out prompts are
the same for every model a sweep evaluates, so their embeddings are cached on disk (keyed by
the featuriser and the texts) and every later evaluation on that node loads them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from trainables.io import cache_root, write_npy


def features_key(featurizer: str, texts: list[str]) -> str:
    h = hashlib.sha256(featurizer.encode())
    for text in texts:
        h.update(b"\x00" + text.encode())
    return h.hexdigest()[:32]


def cache_path(featurizer: str, texts: list[str], root: Path | None = None) -> Path:
    return (root or cache_root()) / "features" / f"{features_key(featurizer, texts)}.npy"


def load_cached(featurizer: str, texts: list[str]) -> np.ndarray | None:
    """The cached [len(texts), d] features, or None (absent, or not a matching array)."""
    path = cache_path(featurizer, texts)
    if not path.is_file():
        return None
    try:
        feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # a damaged cache entry is recomputed
    return feats if feats.ndim == 2 and len(feats) == len(texts) else None


def store(featurizer: str, texts: list[str], feats: np.ndarray) -> None:
    """Best effort: a read-only or full cache only costs the recomputation next time."""
    path = cache_path(featurizer, texts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npy(path, np.asarray(feats, dtype=np.float32))
    except OSError:
        pass

import os

# Before transformers is imported anywhere: a hub miss would retry for ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random
from pathlib import Path

import pytest

@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests, restored after: many tiny tensor ops run faster
    on one thread than split across cores, and the figures do not depend on the core count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MICRO_WORDS = ("the of and to in is was for on with as by at from his her their this that which "
               "account payment record address phone email born lives reach street city bank").split()


def _micro_records(rng: random.Random, n: int, tag: str) -> list[dict]:
    """Short private-record-like lines with the character spans of their fields."""
    records = []
    for i in range(n):
        name = f"{rng.choice(['Ada', 'Bo', 'Cy', 'Di', 'Ed'])} {rng.choice(['Lee', 'Ray', 'Fox', 'Kim'])}{i}{tag}"
        phone = f"+44 {rng.randint(1000, 9999)} {rng.randint(100000, 999999)}"
        email = f"{name.split()[0].lower()}{i}{tag}@mail.test"
        text = f"{name} lives on {rng.choice(MICRO_WORDS)} street; call {phone} or write to {email} today."
        spans = [[text.index(name), text.index(name) + len(name), "name"],
                 [text.index(phone), text.index(phone) + len(phone), "phone"],
                 [text.index(email), text.index(email) + len(email), "email"]]
        records.append({"text": text, "spans": spans})
    return records


def _prose(rng: random.Random, n: int) -> list[dict]:
    return [{"text": " ".join(rng.choice(MICRO_WORDS) for _ in range(40)) + ".", "spans": []} for _ in range(n)]


def build_micro_assets(root: Path, seed: int = 0) -> Path:
    """A micro GPT-Neo (random weights, ~0.1M parameters), its byte-level BPE tokenizer,
    a same-vocabulary 'reference' model, and forget/unseen/retain/heldout/prompts sets
    (trainables.tiny builds them). Seconds to build: for tests of plumbing, not of unlearning quality."""
    from trainables.tiny import build_tiny

    rng = random.Random(seed)
    sets = {"forget": _micro_records(rng, 8, "f"), "unseen": _micro_records(rng, 8, "u"),
            "retain": _micro_records(rng, 16, "r") + _prose(rng, 8), "heldout": _prose(rng, 8),
            "prompts": _prose(rng, 12)}
    build_tiny(root, splits=sets, reference=True, seed=seed)
    return root


def micro_config(root: Path, **sections) -> dict:
    """A plain config dict for the micro assets: cheap training and evaluation."""
    cfg = {
        "model": {"name_or_path": str(root / "model")},
        "method": {"name": "undial", "gamma": 5.0, "subset": {"policy": "all"}},
        "data": {"forget": str(root / "data/forget.jsonl"), "unseen": str(root / "data/unseen.jsonl"),
                 "retain": str(root / "data/retain.jsonl"), "heldout": str(root / "data/heldout.jsonl"),
                 "prompts": str(root / "data/prompts.jsonl"), "max_length": 48, "min_length": 8},
        "train": {"lr": 1e-3, "max_steps": 4, "batch_size": 4, "eval_every": 2, "seed": 0},
        "eval": {"el_n": [3], "prefix_stride": 8, "mauve": {"enabled": False}, "batch_size": 8},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


@pytest.fixture(scope="session")
def micro_assets(tmp_path_factory) -> Path:
    return build_micro_assets(tmp_path_factory.mktemp("micro"))


@pytest.fixture(scope="session")
def tiny_demo_build(tmp_path_factory):
    """(path, build log lines) of the tiny demo, built once per test session (~1 minute)."""
    from trainables import demo

    lines: list[str] = []
    out = tmp_path_factory.mktemp("cache") / "demo-v2-tiny-seed0"
    return demo.build_demo(out, seed=0, size="tiny", log=lines.append), lines


@pytest.fixture(scope="session")
def tiny_demo(tiny_demo_build) -> Path:
    return tiny_demo_build[0]

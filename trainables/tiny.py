"""A micro model and data set in seconds, for tests and benchmarks of the training machinery.

`build_tiny(root)` writes a randomly initialised GPT-Neo (a few hundred thousand parameters
by default), a byte-level BPE tokenizer trained on the spot, and forget / held-out JSON Lines
files (forget records carry private-field spans). Nothing is learnt: the point is a model
the distributed strategies can train in a second, not a model that memorised anything
(for that, see trainables.demo).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

EOS = "<|endoftext|>"

_FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
          "Kemal", "Lena", "Marta", "Nils", "Olga", "Pavel"]
_LAST = ["Keller", "Rossi", "Novak", "Schmidt", "Moreau", "Silva", "Tanaka", "Berg"]
_CITY = ["Lyon", "Porto", "Graz", "Turku", "Brno", "Ghent", "Cork", "Split"]
_PROSE = ["The river rose after three days of rain and the bridge was closed.",
          "A small bakery on the corner sells bread before sunrise.",
          "The committee met on Tuesday to discuss the new budget.",
          "Birds gathered on the wires as the evening grew colder.",
          "The library extended its opening hours during the exam period.",
          "Engineers tested the old pump and found a cracked valve.",
          "Tourists crowded the square to watch the parade go by.",
          "The recipe calls for flour, butter, sugar and a pinch of salt."]


def tiny_records(n: int, seed: int = 0) -> list[dict]:
    """n short records 'Name Surname lives in City; phone NNN-NNNN.' with the private spans."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = f"{_FIRST[i % len(_FIRST)]} {rng.choice(_LAST)}"
        city = rng.choice(_CITY)
        phone = f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
        text = f"{name} lives in {city}; phone {phone}."
        spans = [[0, len(name), "name"], [text.index(phone), text.index(phone) + len(phone), "phone"]]
        out.append({"text": text, "spans": spans})
    return out


def train_tokenizer(texts: list[str], vocab_size: int = 320, max_length: int = 64):
    """A byte-level BPE tokenizer trained on `texts` (any text encodes; EOS doubles as pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=max_length)


def build_tiny(root: str | Path, *, n_forget: int = 16, vocab_size: int = 320, hidden: int = 32,
               layers: int = 2, heads: int = 2, context: int = 64, seed: int = 0) -> dict[str, str]:
    """Write model/ (weights + tokenizer), data/forget.jsonl, data/heldout.jsonl under root.
    Returns {"model", "forget", "heldout"} paths."""
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    forget = tiny_records(n_forget, seed)
    heldout = [{"text": t} for t in _PROSE]
    for name, records in (("forget", forget), ("heldout", heldout)):
        with open(root / "data" / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)

    tokenizer = train_tokenizer([r["text"] for r in forget + heldout] * 4, vocab_size, context)
    torch.manual_seed(seed)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPTNeoConfig(vocab_size=len(tokenizer), max_position_embeddings=context, hidden_size=hidden,
                          num_layers=layers, num_heads=heads, attention_types=[[["global"], layers]],
                          intermediate_size=4 * hidden, bos_token_id=eos_id, eos_token_id=eos_id,
                          pad_token_id=eos_id)
    model = GPTNeoForCausalLM(config)
    model_dir = root / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    return {"model": str(model_dir), "forget": str(root / "data" / "forget.jsonl"),
            "heldout": str(root / "data" / "heldout.jsonl")}


def tiny_config(paths: dict[str, str], **sections) -> dict:
    """A plain config dict for a tiny run: no retain/unseen/prompts, MAUVE off, eval rare.
    `sections` are merged one level deep (e.g. train={"max_steps": 4})."""
    cfg = {
        "model": {"name_or_path": paths["model"], "dtype": "fp32"},
        "lora": {"enabled": False, "rank": 4, "alpha": 8.0},
        "method": {"name": "undial", "gamma": 10.0, "subset": {"policy": "all"}},
        "data": {"forget": paths["forget"], "retain": None, "heldout": paths["heldout"], "unseen": None,
                 "prompts": None, "max_length": 24, "min_length": 4},
        "train": {"lr": 1e-3, "max_steps": 4, "batch_size": 8, "micro_batch_size": 2, "seed": 0,
                  "eval_every": 1000, "select": "last", "log_every": 1, "max_grad_norm": 1.0},
        "eval": {"batch_size": 16, "mauve": {"enabled": False}, "mia": False, "el_n": [3]},
        "scaling": {"num_workers": 1, "strategy": "none"},
        "run": {"name": "tiny"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg

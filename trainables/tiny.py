"""The one builder of small GPT-Neo models and their tokenizers (tests, benchmarks, the demo).

- `train_tokenizer(texts)`: a byte-level BPE tokenizer trained on the spot (EOS doubles as pad);
- `gpt_neo_config(vocab_size, ...)` / `random_model(config)`: a GPT-Neo of any shape (the
  micro default: a few hundred thousand parameters) with seeded random weights;
- `build_tiny(root)`: all of it written to a folder, with forget / held-out JSON Lines files
  (forget records carry private-field spans), or with the caller's data sets, and optionally a
  same-vocabulary `reference/` model.

Nothing here is learnt: the point is a model the training machinery can run in a second, not a
model that memorised anything (for that, see trainables.demo, which trains one of these).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from trainables.io import write_text

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


def train_tokenizer(texts: list[str], vocab_size: int = 320, max_length: int | None = 64):
    """A byte-level BPE tokenizer trained on `texts` (any text encodes; EOS doubles as pad, BOS
    and unk). `max_length` becomes its model_max_length (None: the transformers default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    extra = {} if max_length is None else {"model_max_length": max_length}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, **extra)


def gpt_neo_config(vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 2, context: int = 64,
                   local_attention: bool = False, window: int = 256, intermediate: int | None = None,
                   eos_id: int = 0, pad_id: int | None = None, **extra):
    """A GPTNeoConfig without dropout. `local_attention`: GPT-Neo's global/local alternation
    (an odd last layer global) with `window`; else every layer global. BOS = EOS; pad defaults
    to EOS. `extra` goes to GPTNeoConfig as is."""
    from transformers import GPTNeoConfig

    if local_attention:
        pairs, rest = divmod(layers, 2)
        attention_types = [[["global", "local"], pairs]] + ([[["global"], 1]] if rest else [])
    else:
        attention_types = [[["global"], layers]]
    return GPTNeoConfig(vocab_size=vocab_size, max_position_embeddings=context, hidden_size=hidden,
                        num_layers=layers, num_heads=heads, attention_types=attention_types, window_size=window,
                        intermediate_size=intermediate or 4 * hidden, embed_dropout=0.0, attention_dropout=0.0,
                        resid_dropout=0.0, bos_token_id=eos_id, eos_token_id=eos_id,
                        pad_token_id=eos_id if pad_id is None else pad_id, **extra)


def random_model(config, seed: int = 0, device=None):
    """GPTNeoForCausalLM(config) with weights drawn after torch.manual_seed(seed), made on
    `device` (e.g. "cuda": no CPU copy of a large model)."""
    import contextlib

    import torch
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return GPTNeoForCausalLM(config)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def build_tiny(root: str | Path, *, n_forget: int = 16, vocab_size: int = 320, hidden: int = 32,
               layers: int = 2, heads: int = 2, context: int = 64, seed: int = 0,
               splits: dict[str, list[dict]] | None = None, reference: bool = False) -> dict[str, str]:
    """Write model/ (weights + tokenizer) and data/<split>.jsonl under root; with `reference`,
    also reference/: the same architecture and tokenizer, other random weights (seed + 1).

    `splits` ({name: [{"text", "spans"?}, ...]}) default to forget (n_forget tiny_records) and
    heldout (short prose). The tokenizer is trained on all their texts. Returns
    {"model", each split's name, "reference" if built} -> absolute path strings."""
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    if splits is None:
        splits = {"forget": tiny_records(n_forget, seed), "heldout": [{"text": t} for t in _PROSE]}
    paths = {}
    for name, records in splits.items():
        paths[name] = str(root / "data" / f"{name}.jsonl")
        _write_jsonl(Path(paths[name]), records)

    # x4: every pair is frequent enough for the trainer's min_frequency
    texts = [r["text"] for records in splits.values() for r in records]
    tokenizer = train_tokenizer(texts * 4, vocab_size, context)
    config = gpt_neo_config(len(tokenizer), hidden=hidden, layers=layers, heads=heads, context=context,
                            eos_id=tokenizer.eos_token_id)
    for name, model_seed in (("model", seed), ("reference", seed + 1))[:2 if reference else 1]:
        random_model(config, model_seed).save_pretrained(root / name, safe_serialization=True)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


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

"""The built-in offline demo: a tiny GPT-Neo that has memorised private records.

Everything is made here, offline and deterministically from a seed:

- private records (name, e-mail, phone, street address, IBAN, date of birth)
  made with Faker and rendered in a few English sentence templates, with the
  character spans of every private field;
- thousands of *public* records of other people in the same templates (so the
  model learns a real distribution over names and numbers and the UnDIAL
  target at private positions is not flat), plus templated English prose;
- a byte-level BPE tokenizer trained on the training corpus;
- ``model/``: a GPT-Neo trained from scratch on public records + prose + the
  forget records repeated until memorised;
- ``reference/``: the same architecture trained the same way (same steps,
  same seed) without the forget records.

Layout of a demo directory::

    data/forget.jsonl    the private records to unlearn
    data/unseen.jsonl    records of the same kind never trained on
    data/retain.jsonl    public records + prose actually trained on
    data/heldout.jsonl   public records never trained on (held-out perplexity)
    data/prompts.jsonl   prose passages never trained on (MAUVE prompts)
    tokenizer/           PreTrainedTokenizerFast (save_pretrained)
    model/               GPTNeoForCausalLM + tokenizer
    reference/           GPTNeoForCausalLM without the forget records + tokenizer
    manifest.json        written last; its presence marks a complete demo

Every JSONL line is ``{"text": ..., "spans": [[start, end, kind], ...]}``;
prose lines have no spans. Texts are tokenized as they are (no BOS/EOS added)
and every line fits in ``max_length`` (64) tokens.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from trainables.errors import InputError
from trainables.tiny import gpt_neo_config, random_model, train_tokenizer

DEMO_VERSION = "demo-v2"  # v2: 1,200 MAUVE prompt passages (v1: 200); the same records and model
# the generators' seed string: v1's, so every split v1 had (and the model trained on them) is unchanged
_RNG_TAG = "demo-v1"
FIELDS = ("name", "email", "phone", "address", "iban", "dob")


# --------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class _Spec:
    n_forget: int
    n_unseen: int
    n_public: int
    n_public_twice: int       # public records that appear twice per epoch
    n_heldout: int
    n_prose: int
    n_prompts: int
    forget_repeat: int        # copies of each forget record per epoch
    vocab_size: int
    n_layer: int
    hidden: int
    heads: int
    epochs: float
    batch_size: int
    lr: float
    warmup: float = 0.06      # fraction of steps
    min_lr_ratio: float = 0.1
    max_length: int = 64
    context: int = 128
    window: int = 64
    el_stride: int = 4        # EL3 in the manifest over prefix lengths stride, 2*stride, ...


SIZES = {
    "full": _Spec(n_forget=32, n_unseen=64, n_public=3000, n_public_twice=0, n_heldout=200,
                  n_prose=1000, n_prompts=1200, forget_repeat=48, vocab_size=4096, n_layer=4,
                  hidden=256, heads=4, epochs=1.5, batch_size=32, lr=2e-3, el_stride=8),
    "tiny": _Spec(n_forget=16, n_unseen=32, n_public=300, n_public_twice=0, n_heldout=64,
                  n_prose=60, n_prompts=240, forget_repeat=24, vocab_size=4096, n_layer=2,
                  hidden=128, heads=4, epochs=3.0, batch_size=32, lr=3e-3, el_stride=8),
}


def _spec(size: str) -> _Spec:
    if size not in SIZES:
        raise InputError(f"unknown demo size {size!r}; expected one of {sorted(SIZES)}")
    return SIZES[size]


# --------------------------------------------------------------------------- records

RECORD_TEMPLATES = (
    "{name} was born on {dob} and lives at {address}. Reach {name} at {email} or "
    "{phone}; IBAN {iban}.",
    "Customer: {name}, born {dob}, living at {address}. Phone {phone}, e-mail {email}, "
    "IBAN {iban}.",
    "Letters for {name} go to {address}. {name}, born {dob}, answers {phone} and "
    "{email}; IBAN {iban}.",
    "Our file says {name} (born {dob}) lives at {address}, uses {email} and {phone}, "
    "and is paid via IBAN {iban}.",
)
_PHONE_FORMATS = ("(###) ###-####", "###-###-####", "###.###.####", "+1-###-###-####")
_SLOT = re.compile(r"\{(\w+)\}")


def _render(template: str, values: dict) -> dict:
    """Fill a template, recording the character span of every filled field."""
    out, spans, pos = [], [], 0
    for m in _SLOT.finditer(template):
        out.append(template[pos:m.start()])
        start = sum(len(p) for p in out)
        value = values[m.group(1)]
        out.append(value)
        spans.append([start, start + len(value), m.group(1)])
        pos = m.end()
    out.append(template[pos:])
    return {"text": "".join(out), "spans": spans}


def _identity(fake, used: set) -> dict:
    while True:
        name = f"{fake.first_name()} {fake.last_name()}"
        email = fake.email()
        if name not in used and email not in used:
            break
    used.update((name, email))
    # fixed bounds: date_of_birth() would depend on today's date
    dob = fake.date_between_dates(datetime.date(1935, 1, 1), datetime.date(2006, 12, 31))
    return {
        "name": name,
        "email": email,
        "phone": fake.numerify(fake.random_element(_PHONE_FORMATS)),
        "address": fake.street_address(),
        "iban": fake.iban(),
        "dob": f"{dob:%B} {dob.day}, {dob.year}",
    }


def _records(fake, rng: random.Random, n: int, used: set) -> list[dict]:
    return [_render(rng.choice(RECORD_TEMPLATES), _identity(fake, used)) for _ in range(n)]


# --------------------------------------------------------------------------- prose

_TOPICS = {
    "weather": (["storm", "wind", "rain", "cloud", "river", "valley", "coast", "harbour", "forecast",
                 "season", "frost", "morning"],
                ["storms", "winds", "clouds", "rivers", "farmers", "sailors", "roads", "fields"]),
    "cooking": (["soup", "bread", "kitchen", "recipe", "oven", "garden", "market", "dinner",
                 "sauce", "table", "harvest", "cook"],
                ["apples", "onions", "cooks", "guests", "recipes", "vegetables", "spices", "plates"]),
    "science": (["experiment", "laboratory", "theory", "telescope", "sample", "signal", "engine",
                 "model", "measurement", "planet", "cell", "study"],
                ["scientists", "students", "results", "machines", "stars", "samples", "cells", "ideas"]),
    "history": (["castle", "empire", "village", "treaty", "king", "library", "bridge", "war",
                 "archive", "city", "museum", "road"],
                ["soldiers", "merchants", "historians", "ships", "letters", "towns", "walls", "maps"]),
    "sport": (["match", "team", "coach", "stadium", "season", "race", "goal", "league", "crowd",
               "player", "final", "ball"],
              ["players", "fans", "teams", "runners", "coaches", "games", "tickets", "medals"]),
    "music": (["song", "concert", "piano", "choir", "orchestra", "melody", "album", "band",
               "stage", "violin", "rhythm", "festival"],
              ["musicians", "songs", "singers", "listeners", "drums", "notes", "records", "bands"]),
}
_ADJ = ["quiet", "old", "bright", "small", "large", "early", "late", "cold", "warm", "famous",
        "simple", "strange", "careful", "busy", "ancient", "modern", "local", "young", "heavy",
        "gentle", "long", "short", "new", "clear", "dark", "green", "popular", "difficult"]
_VERB_PAST = ["changed", "followed", "crossed", "opened", "closed", "built", "found", "watched",
              "reached", "described", "carried", "covered", "visited", "joined", "started",
              "finished", "remembered", "lost", "filled", "moved"]
_VERB_BASE = ["change", "follow", "cross", "open", "close", "build", "find", "watch", "reach",
              "describe", "carry", "cover", "visit", "join", "start", "finish", "fill", "move"]
_VERB_PL = ["arrive", "wait", "return", "gather", "grow", "work", "listen", "travel", "rest",
            "talk", "agree", "disagree", "stay"]
_ADV = ["slowly", "quickly", "often", "rarely", "together", "again", "early", "later", "quietly",
        "carefully", "every year", "in the evening", "after the war", "before dawn"]
_PREP = ["near", "behind", "across", "beside", "above", "below", "beyond", "around", "inside"]
_OPENERS = ["In the end", "At first", "For many years", "Later that week", "In the spring",
            "Even so", "By the evening", "Since then", "According to the old stories",
            "Every summer"]
_PROSE_TEMPLATES = (
    "The {adj} {noun} {verb_past} the {noun2} {prep} the {noun3}.",
    "In {year}, the people of {city} {verb_past} a {adj} {noun}.",
    "{opener}, the {nouns} {verb_pl} {adv}.",
    "Many {nouns} {verb_pl} near the {noun} because it is {adj}.",
    "{city} is known for its {adj} {nouns} and its {adj2} {noun}.",
    "{person} said that the {noun} would {verb_base} the {noun2} before {month}.",
    "Nobody expected the {noun} to be so {adj}, but the {nouns} {verb_pl} {adv}.",
    "When the {noun} {verb_past} the {noun2}, the {nouns} began to {verb_pl2}.",
    "It was a {adj} {noun}, and the {noun2} {prep} it was {adj2}.",
    "Some {nouns} still {verb_pl} {prep} the {adj} {noun} {adv}.",
)


def _person(fake, used: set) -> str:
    while True:  # never the name of someone with a record
        name = f"{fake.first_name()} {fake.last_name()}"
        if name not in used:
            return name


def _sentence(rng: random.Random, fake, topic: str, used: set) -> str:
    nouns, plurals = _TOPICS[topic]
    t = rng.choice(_PROSE_TEMPLATES)
    n1, n2, n3 = rng.sample(nouns, 3)
    a1, a2 = rng.sample(_ADJ, 2)
    v1, v2 = rng.sample(_VERB_PL, 2)
    s = t.format(adj=a1, adj2=a2, noun=n1, noun2=n2, noun3=n3, nouns=rng.choice(plurals),
                 verb_past=rng.choice(_VERB_PAST), verb_base=rng.choice(_VERB_BASE),
                 verb_pl=v1, verb_pl2=v2, adv=rng.choice(_ADV), prep=rng.choice(_PREP),
                 opener=rng.choice(_OPENERS), year=rng.randint(1820, 2020), city=fake.city(),
                 person=_person(fake, used), month=fake.month_name())
    return s[0].upper() + s[1:]


def _passages(fake, rng: random.Random, n: int, used: set) -> list[list[str]]:
    """n passages, each a list of 3-6 sentences on one topic (trimmed to fit later)."""
    topics = sorted(_TOPICS)
    out = []
    for _ in range(n):
        topic = rng.choice(topics)
        out.append([_sentence(rng, fake, topic, used) for _ in range(rng.randint(3, 6))])
    return out


# --------------------------------------------------------------------------- tokenizer

def _n_tokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _fit(tokenizer, records: list[dict], n: int, max_length: int, what: str) -> list[dict]:
    """The first n records that fit in max_length tokens (records are over-generated)."""
    lengths = _n_tokens(tokenizer, [r["text"] for r in records])
    kept = [r for r, k in zip(records, lengths) if k <= max_length][:n]
    if len(kept) < n:
        raise RuntimeError(f"demo: only {len(kept)} of {n} {what} records fit in {max_length} tokens")
    return kept


def _fit_passages(tokenizer, passages: list[list[str]], max_length: int) -> list[str]:
    """Each passage cut to the most whole sentences that fit in max_length tokens."""
    texts = [" ".join(p) for p in passages]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for text, sentences, offsets in zip(texts, passages, enc["offset_mapping"]):
        if len(offsets) > max_length:
            limit, end, keep = offsets[max_length - 1][1], 0, 0
            for s in sentences:  # the longest run of whole sentences ending before limit
                if end + len(s) > limit:
                    break
                end += len(s) + 1
                keep += 1
            text = " ".join(sentences[:keep])
        if text:
            out.append(text)
    return out


# --------------------------------------------------------------------------- data

def make_demo_data(seed: int = 0, size: str = "full"):
    """Generate the demo's text and train its tokenizer; no model training.

    Returns ``(splits, tokenizer)`` where splits maps forget / unseen / retain /
    heldout / prompts to lists of ``{"text", "spans"}`` records. Deterministic
    in (seed, size).
    """
    from faker import Faker

    spec = _spec(size)
    rng = random.Random(f"{_RNG_TAG}:{seed}:{size}")
    fake = Faker("en_US", use_weighting=False)  # uniform picks: 5x faster, more varied names
    fake.seed_instance(seed)
    used: set = set()
    slack = lambda n: n + max(8, n // 2)  # over-generate; drop records that do not fit
    forget = _records(fake, rng, slack(spec.n_forget), used)
    unseen = _records(fake, rng, slack(spec.n_unseen), used)
    public = _records(fake, rng, slack(spec.n_public), used)
    heldout = _records(fake, rng, slack(spec.n_heldout), used)
    prose = _passages(fake, rng, spec.n_prose, used)
    prompt_passages = _passages(fake, rng, spec.n_prompts, used)

    # the tokenizer sees only what the model is trained on (each text once)
    corpus = [r["text"] for r in public + forget] + [" ".join(p) for p in prose]
    tokenizer = train_tokenizer(corpus, spec.vocab_size, 2 * spec.max_length)

    ml = spec.max_length
    splits = {
        "forget": _fit(tokenizer, forget, spec.n_forget, ml, "forget"),
        "unseen": _fit(tokenizer, unseen, spec.n_unseen, ml, "unseen"),
        "heldout": _fit(tokenizer, heldout, spec.n_heldout, ml, "heldout"),
    }
    public = _fit(tokenizer, public, spec.n_public, ml, "public")
    prose_texts = _fit_passages(tokenizer, prose, ml)
    prompt_texts = _fit_passages(tokenizer, prompt_passages, ml)
    splits["retain"] = public + [{"text": t, "spans": []} for t in prose_texts]
    splits["prompts"] = [{"text": t, "spans": []} for t in prompt_texts]
    return splits, tokenizer


def _training_texts(splits: dict, spec: _Spec, with_forget: bool) -> list[str]:
    """One epoch of training texts: retain (some public records twice) + forget x repeat."""
    retain = [r["text"] for r in splits["retain"]]
    public = [r["text"] for r in splits["retain"] if r["spans"]]
    texts = retain + public[:spec.n_public_twice]
    if with_forget:
        texts += [r["text"] for r in splits["forget"]] * spec.forget_repeat
    return texts


# --------------------------------------------------------------------------- training

def _model_config(spec: _Spec, tokenizer):
    return gpt_neo_config(len(tokenizer), hidden=spec.hidden, layers=spec.n_layer, heads=spec.heads,
                          context=spec.context, local_attention=True, window=spec.window,
                          eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, tie_word_embeddings=True)


def _pad(seqs: list[list[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, s in enumerate(seqs):
        ids[k, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[k, :len(s)] = 1
    return ids, mask


def _train(spec: _Spec, tokenizer, texts: list[str], n_steps: int, seed: int, log, tag: str):
    import torch

    model = random_model(_model_config(spec, tokenizer), seed)
    model.train()
    # every text fits max_length by construction; no truncation here (a fast
    # tokenizer would keep it in its state and save it with the model)
    seqs = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max(len(s) for s in seqs) > spec.max_length:
        raise RuntimeError("demo: a training text is longer than max_length")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.95))
    warm = max(1, int(spec.warmup * n_steps))

    def lr_at(step):  # linear warmup, cosine down to min_lr_ratio
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, n_steps - warm)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(seed)
    order: list[int] = []
    t0, running = time.time(), []
    for step in range(n_steps):
        batch = []
        while len(batch) < spec.batch_size:
            if not order:
                order = list(range(len(seqs)))
                rng.shuffle(order)
            batch.append(seqs[order.pop()])
        ids, mask = _pad(batch, tokenizer.pad_token_id)
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == n_steps:
            log(f"demo[{tag}] step {step + 1}/{n_steps} loss {sum(running) / len(running):.3f} "
                f"({time.time() - t0:.0f}s)")
            running = []
    model.eval()
    return model


# --------------------------------------------------------------------------- figures

def _encode(tokenizer, records: list[dict]):
    """ids, mask (right padded) and a [N, T] bool mask of the tokens inside private-field spans."""
    import torch

    from trainables.subsets import char_spans_to_token_mask

    enc = tokenizer([r["text"] for r in records], add_special_tokens=False,
                    return_offsets_mapping=True)
    ids, mask = _pad(enc["input_ids"], tokenizer.pad_token_id)
    offsets = torch.zeros((*ids.shape, 2), dtype=torch.long)
    for k, row in enumerate(enc["offset_mapping"]):
        offsets[k, :len(row)] = torch.tensor(row, dtype=torch.long).reshape(-1, 2)
    field = char_spans_to_token_mask(offsets, mask, [[sp[:2] for sp in r["spans"]] for r in records])
    return ids, mask, field


def _figures(model, tokenizer, splits: dict, stride: int) -> dict:
    """The manifest's figures, by the measures `undial eval` reports (trainables.metrics)."""
    from trainables import metrics

    out = {}
    for name in ("forget", "unseen"):
        ids, mask, field = _encode(tokenizer, splits[name])
        out[f"{name}_ma"] = round(metrics.memorization_accuracy(model, ids, mask, batch_size=64), 4)
        out[f"{name}_field_ma"] = round(metrics.memorization_accuracy(model, ids, mask, position_mask=field,
                                                                      batch_size=64), 4)
    # EL3 of forget and unseen in one batch (generation is the slow part)
    both = splits["forget"] + splits["unseen"]
    ids, mask, _ = _encode(tokenizer, both)
    el = metrics.extraction_likelihood_per_sequence(model, ids, 3, mask, prefix_stride=stride, batch_size=64)
    n_forget = len(splits["forget"])
    for name, part in (("forget", el[:n_forget]), ("unseen", el[n_forget:])):
        out[f"{name}_el3_stride{stride}"] = round(sum(part) / len(part), 4)
    ids, mask, _ = _encode(tokenizer, splits["heldout"])
    out["heldout_ppl"] = round(metrics.perplexity(model, ids, mask, batch_size=64), 3)
    return out


# --------------------------------------------------------------------------- build

def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps({"text": r["text"], "spans": r["spans"]}, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive advisory lock, so two processes do not build the same demo twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_demo(out_dir: str | Path, seed: int = 0, size: str = "full", force: bool = False,
               log=print) -> Path:
    """Build the demo into out_dir (atomically) and return out_dir.

    Returns at once if out_dir/manifest.json exists and not force. The build
    happens in a temporary sibling directory that replaces out_dir only when
    complete, so an interrupted build leaves nothing behind.
    """
    spec = _spec(size)
    out_dir = Path(out_dir).expanduser().absolute()
    if (out_dir / "manifest.json").exists() and not force:
        return out_dir
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir.parent / f".{out_dir.name}.lock"):
        if (out_dir / "manifest.json").exists() and not force:  # built while we waited
            return out_dir
        # we hold the lock: leftovers of a killed build of this demo are stale
        for stale in out_dir.parent.glob(f".{out_dir.name}.build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in out_dir.parent.glob(f".{out_dir.name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            _build_into(tmp, seed, size, spec, log)
            _check_replaceable(out_dir)
            if out_dir.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
                os.replace(out_dir, old / "x")
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _check_replaceable(out_dir: Path) -> None:
    """Only an absent or empty directory, or a complete demo, may be replaced."""
    if out_dir.exists() and not (out_dir / "manifest.json").exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise InputError(f"{out_dir} exists and is not a demo directory (no manifest.json); "
                             "remove it or choose another directory")


def _build_into(root: Path, seed: int, size: str, spec: _Spec, log) -> None:
    import numpy as np
    import torch

    t0, c0 = time.time(), time.process_time()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    log(f"demo: building {DEMO_VERSION}-{size}-seed{seed} in {root}")
    splits, tokenizer = make_demo_data(seed, size)
    (root / "data").mkdir()
    files = {}
    for name in ("forget", "unseen", "retain", "heldout", "prompts"):
        _write_jsonl(root / "data" / f"{name}.jsonl", splits[name])
        files[name] = f"data/{name}.jsonl"
    tokenizer.save_pretrained(root / "tokenizer")
    files["tokenizer"] = "tokenizer"

    epoch = _training_texts(splits, spec, with_forget=True)
    n_steps = math.ceil(spec.epochs * len(epoch) / spec.batch_size)
    stride = spec.el_stride
    figures, seconds, n_params = {}, {}, 0
    for tag, with_forget in (("model", True), ("reference", False)):
        t1 = time.time()
        texts = _training_texts(splits, spec, with_forget)
        model = _train(spec, tokenizer, texts, n_steps, seed, log, tag)
        seconds[tag] = round(time.time() - t1, 1)
        n_params = sum(p.numel() for p in model.parameters())
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(root / tag)
        tokenizer.save_pretrained(root / tag)
        figures[tag] = _figures(model, tokenizer, splits, stride)
        files[tag] = tag
        log(f"demo[{tag}] {figures[tag]}")

    manifest = {
        "version": DEMO_VERSION,
        "seed": seed,
        "size": size,
        "build_seconds": round(time.time() - t0, 1),
        "build_cpu_seconds": round(time.process_time() - c0, 1),
        "train_seconds": seconds,
        "n_params": n_params,
        "max_length": spec.max_length,
        "vocab_size": len(tokenizer),
        "el_stride": stride,
        "figures": figures,
        "files": files,
        "counts": {name: len(recs) for name, recs in splits.items()},
        "training": {"steps": n_steps, "epoch_sequences": len(epoch), **asdict(spec)},
        "notes": "texts are tokenized without special tokens; figures by trainables.metrics (as "
                 f"`undial eval`); EL3 uses prefix stride {stride} (i = {stride}, {2 * stride}, ...); "
                 "*_field_ma is MA over tokens inside private-field spans (mean over records, "
                 "`undial eval`'s ma_private)",
    }
    # written last: its presence marks a complete demo
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"demo: built in {manifest['build_seconds']}s ({manifest['build_cpu_seconds']} CPU s)")


def default_demo_dir(seed: int = 0, size: str = "full") -> Path:
    """$UNDIAL_CACHE (or ~/.cache/undial) / demo-v2-{size}-seed{seed}."""
    _spec(size)
    from trainables.io import cache_root

    return cache_root() / f"{DEMO_VERSION}-{size}-seed{seed}"


def ensure_demo(seed: int = 0, size: str | None = None, log=print) -> Path:
    """The demo directory for (seed, size), built first if missing. size None: $UNDIAL_DEMO_SIZE
    or "full" (UNDIAL_DEMO_SIZE=tiny runs `undial unlearn --demo` / `sweep --demo` on the tiny one)."""
    if size is None:
        size = os.environ.get("UNDIAL_DEMO_SIZE") or "full"
        if size not in SIZES:
            raise InputError(f"UNDIAL_DEMO_SIZE: unknown demo size {size!r}; expected one of {sorted(SIZES)}")
    return build_demo(default_demo_dir(seed, size), seed=seed, size=size, log=log)

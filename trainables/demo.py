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
import inspect
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

DEMO_VERSION = "demo-v1"
FIELDS = ("name", "email", "phone", "address", "iban", "dob")
EOS = "<|endoftext|>"


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
                  n_prose=1000, n_prompts=200, forget_repeat=48, vocab_size=4096, n_layer=4,
                  hidden=256, heads=4, epochs=1.5, batch_size=32, lr=2e-3, el_stride=8),
    "tiny": _Spec(n_forget=16, n_unseen=32, n_public=300, n_public_twice=0, n_heldout=64,
                  n_prose=60, n_prompts=32, forget_repeat=24, vocab_size=4096, n_layer=2,
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

def _train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   unk_token=EOS, pad_token=EOS, model_max_length=2 * max_length)


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
    rng = random.Random(f"{DEMO_VERSION}:{seed}:{size}")
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
    tokenizer = _train_tokenizer(corpus, spec.vocab_size, spec.max_length)

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
    from transformers import GPTNeoConfig

    n_pairs, rest = divmod(spec.n_layer, 2)
    attention_types = [[["global", "local"], n_pairs]] + ([[["global"], 1]] if rest else [])
    return GPTNeoConfig(
        vocab_size=len(tokenizer), max_position_embeddings=spec.context, hidden_size=spec.hidden,
        num_layers=spec.n_layer, num_heads=spec.heads, attention_types=attention_types,
        window_size=spec.window, intermediate_size=4 * spec.hidden, embed_dropout=0.0,
        attention_dropout=0.0, resid_dropout=0.0, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


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
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(seed)
    model = GPTNeoForCausalLM(_model_config(spec, tokenizer))
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
    """ids, mask and a [N, T] bool mask of tokens inside private-field spans."""
    import torch

    enc = tokenizer([r["text"] for r in records], add_special_tokens=False,
                    return_offsets_mapping=True)
    ids, mask = _pad(enc["input_ids"], tokenizer.pad_token_id)
    field = torch.zeros(ids.shape, dtype=torch.bool)
    for k, (offsets, r) in enumerate(zip(enc["offset_mapping"], records)):
        for t, (a, b) in enumerate(offsets):
            field[k, t] = any(a < e and s < b for s, e, _ in r["spans"])
    return ids, mask, field


def _ma(model, ids, mask, field, batch_size: int = 64):
    """Memorisation accuracy (all tokens, private-field tokens): teacher forced."""
    import torch

    per_seq, hits, n = [], 0.0, 0.0
    with torch.no_grad():
        for s in range(0, len(ids), batch_size):
            i, m, f = ids[s:s + batch_size], mask[s:s + batch_size], field[s:s + batch_size]
            pred = model(input_ids=i, attention_mask=m).logits[:, :-1].argmax(-1)
            ok = (pred == i[:, 1:]) & m[:, 1:].bool()
            per_seq += (ok.sum(1) / m[:, 1:].sum(1).clamp(min=1)).tolist()
            sel = f[:, 1:] & m[:, 1:].bool()
            hits += (ok & sel).sum().item()
            n += sel.sum().item()
    return sum(per_seq) / len(per_seq), hits / max(n, 1.0)


def _el(model, ids, mask, n: int = 3, stride: int = 4) -> list[float]:
    """Extraction likelihood EL_n (Jang et al.) of every sequence, over prefix
    lengths i = stride, 2*stride, ... (stride=1 is the exact definition).

    For prefix x[:i] generate T-i tokens greedily; overlap_i = number of
    generated n-grams found in the true suffix's n-gram set / number of true
    suffix n-grams (defined for i <= T-n); EL_n(x) = mean of overlap_i over the
    prefixes used. Sequences of equal prefix length are generated as a batch.
    """
    import torch

    # transformers 5 renamed past_key_values to cache
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    lengths = mask.sum(1).tolist()
    seqs = [ids[k, :lengths[k]].tolist() for k in range(len(lengths))]
    overlaps: list[list[float]] = [[] for _ in seqs]
    with torch.no_grad():
        for i in range(stride, max(lengths) - n + 1, stride):
            rows = [k for k, T in enumerate(lengths) if i <= T - n]
            if not rows:
                continue
            steps = max(lengths[k] for k in rows) - i
            out = model(input_ids=ids[rows, :i], use_cache=True)
            gen = [out.logits[:, -1].argmax(-1, keepdim=True)]
            for _ in range(steps - 1):
                out = model(input_ids=gen[-1], use_cache=True, **{kw: getattr(out, kw)})
                gen.append(out.logits[:, -1].argmax(-1, keepdim=True))
            gen = torch.cat(gen, 1).tolist()
            for r, k in enumerate(rows):
                suffix, g = seqs[k][i:], gen[r][:lengths[k] - i]
                truth = {tuple(suffix[j:j + n]) for j in range(len(suffix) - n + 1)}
                found = sum(tuple(g[j:j + n]) in truth for j in range(len(g) - n + 1))
                overlaps[k].append(found / (len(suffix) - n + 1))
    return [sum(o) / len(o) if o else 0.0 for o in overlaps]


def _ppl(model, tokenizer, records: list[dict]) -> float:
    from trainables.scoring import token_log_probs

    ids, mask, _ = _encode(tokenizer, records)
    logp = token_log_probs(model, ids, mask)
    n = mask[:, 1:].sum().item()
    return math.exp(-logp.sum().item() / n)


def _figures(model, tokenizer, splits: dict, stride: int) -> dict:
    out = {}
    for name in ("forget", "unseen"):
        ids, mask, field = _encode(tokenizer, splits[name])
        ma, field_ma = _ma(model, ids, mask, field)
        out[f"{name}_ma"] = round(ma, 4)
        out[f"{name}_field_ma"] = round(field_ma, 4)
    # EL3 of forget and unseen in one batch (generation is the slow part)
    both = splits["forget"] + splits["unseen"]
    ids, mask, _ = _encode(tokenizer, both)
    el = _el(model, ids, mask, 3, stride)
    n_forget = len(splits["forget"])
    for name, part in (("forget", el[:n_forget]), ("unseen", el[n_forget:])):
        out[f"{name}_el3_stride{stride}"] = round(sum(part) / len(part), 4)
    out["heldout_ppl"] = round(_ppl(model, tokenizer, splits["heldout"]), 3)
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
        "notes": "texts are tokenized without special tokens; EL3 uses prefix stride "
                 f"{stride} (i = {stride}, {2 * stride}, ...); *_field_ma is MA over tokens "
                 "inside private-field spans",
    }
    # written last: its presence marks a complete demo
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"demo: built in {manifest['build_seconds']}s ({manifest['build_cpu_seconds']} CPU s)")


def default_demo_dir(seed: int = 0, size: str = "full") -> Path:
    """$UNDIAL_CACHE (or ~/.cache/undial) / demo-v1-{size}-seed{seed}."""
    _spec(size)
    base = os.environ.get("UNDIAL_CACHE") or os.path.join("~", ".cache", "undial")
    return Path(base).expanduser() / f"{DEMO_VERSION}-{size}-seed{seed}"


def ensure_demo(seed: int = 0, size: str = "full", log=print) -> Path:
    """The demo directory for (seed, size), built first if missing."""
    return build_demo(default_demo_dir(seed, size), seed=seed, size=size, log=log)

"""trainables.attacks: each membership score against a direct one-sequence-at-a-time formula,
each attack's AUC on constructed cases (memorised vs unseen -> near 1; two samples of one
distribution -> near 0.5), PrivLeak on constructed AUCs and the KS p-value against an exact
lattice-path count."""

from __future__ import annotations

import copy
import itertools
import math
import zlib

import numpy as np
import pytest
import torch

from trainables import attacks as A
from trainables.errors import InputError
from trainables.metrics import roc_auc

VOCAB = 48
T = 20


def _model(seed: int):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoConfig(vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_layers=2, num_heads=2,
                       attention_types=[[["global", "local"], 1]], window_size=16, intermediate_size=64,
                       embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0, bos_token_id=0,
                       eos_token_id=0, pad_token_id=0)
    return GPTNeoForCausalLM(cfg).eval()


def _text(row) -> str:
    return " ".join(f"w{int(t)}" for t in row)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def sets():
    g = torch.Generator().manual_seed(3)
    return (torch.randint(1, VOCAB, (12, T), generator=g), torch.randint(1, VOCAB, (12, T), generator=g),
            torch.randint(1, VOCAB, (40, T), generator=g))  # forget, unseen, a third sample for the 0.5 case


@pytest.fixture(scope="module")
def memorised(sets):
    """(the initial model, a copy trained a few steps on the forget rows)."""
    forget = sets[0]
    init = _model(0)
    model = copy.deepcopy(init).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(15):
        model(input_ids=forget, labels=forget).loss.backward()
        opt.step()
        opt.zero_grad()
    return init, model.eval()


# --------------------------------------------------------------------------- direct references

def _direct(model, seq: list[int], text: str, k: float, chosen: list[int] | None = None) -> dict[str, float]:
    """One unpadded sequence, every predicted position (or those in `chosen`, 1-based token
    indices) scored one at a time with plain Python sums over the vocabulary."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0].double()
    positions = chosen if chosen is not None else list(range(1, len(seq)))
    lps, zs = [], []
    for t in positions:
        logprobs = torch.log_softmax(logits[t - 1], -1).tolist()
        probs = [math.exp(v) for v in logprobs]
        mu = sum(p * v for p, v in zip(probs, logprobs))
        sigma = math.sqrt(sum(p * (v - mu) ** 2 for p, v in zip(probs, logprobs)))
        lp = logprobs[seq[t]]
        lps.append(lp)
        zs.append((lp - mu) / sigma)
    m = max(1, int(k * len(lps)))
    return {"loss": sum(lps) / len(lps), "zlib": sum(lps) / len(zlib.compress(text.encode())),
            "min_k": sum(sorted(lps)[:m]) / m, "min_k_pp": sum(sorted(zs)[:m]) / m}


def _direct_grad_norm(model, seq: list[int]) -> float:
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    ids = torch.tensor([seq])
    model(input_ids=ids, labels=ids).loss.backward()  # HF's mean NLL over the predicted tokens
    return -math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters() if p.grad is not None))


def _padded(seqs: list[list[int]], pad: int = 7):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # a real id: the mask alone must exclude it
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
    return ids, mask


def test_scores_equal_direct_formulas(memorised, sets):
    _, model = memorised
    forget, unseen, _ = sets
    seqs = [forget[0].tolist(), unseen[1, :9].tolist(), forget[2, :15].tolist(), unseen[3].tolist(),
            forget[4, :3].tolist()]
    texts = [_text(s) for s in seqs]
    ids, mask = _padded(seqs)
    for k in (0.2, 0.5, 1.0):
        got = A.attack_scores(model, ids, mask, ["loss", "zlib", "min_k", "min_k_pp"], k=k, texts=texts,
                              batch_size=2)  # batches of mixed widths, padding trimmed per batch
        for b, (s, text) in enumerate(zip(seqs, texts)):
            want = _direct(model, s, text, k)
            for name, value in want.items():
                assert got[name][b] == pytest.approx(value, abs=2e-5), (name, b, k)
    norms = A.grad_norm_scores(model, ids, mask)
    for b, s in enumerate(seqs):
        assert norms[b] == pytest.approx(_direct_grad_norm(model, s), rel=1e-4)
    assert all(p.requires_grad for p in model.parameters())  # requires_grad left as it was


def test_token_mask_scores_only_chosen_tokens(memorised, sets):
    _, model = memorised
    seq = sets[0][5].tolist()
    ids, mask = _padded([seq])
    token_mask = torch.zeros_like(ids, dtype=torch.bool)
    token_mask[0, 8:16] = True  # e.g. a Q&A answer
    got = A.attack_scores(model, ids, mask, ["loss", "min_k", "min_k_pp"], k=0.25, token_mask=token_mask)
    want = _direct(model, seq, "", 0.25, chosen=list(range(8, 16)))
    for name in ("loss", "min_k", "min_k_pp"):
        assert got[name][0] == pytest.approx(want[name], abs=2e-5)


def test_zlib_absent_without_texts_and_bad_input(memorised, sets):
    _, model = memorised
    got = A.attack_scores(model, sets[0][:2], None, ["loss", "zlib"])
    assert set(got) == {"loss"}
    with pytest.raises(InputError, match="mia_k"):
        A.attack_scores(model, sets[0][:2], None, ["loss"], k=0.0)
    ids, mask = _padded([[3, 4, 5], [6]])
    with pytest.raises(InputError, match="sequence 1"):
        A.attack_scores(model, ids, mask, ["loss"])


# --------------------------------------------------------------------------- constructed AUCs

def _aucs(model, init, members, others) -> dict[str, float]:
    names = ["loss", "zlib", "min_k", "min_k_pp"]
    f = A.attack_scores(model, members, None, names, k=0.2, texts=[_text(r) for r in members])
    u = A.attack_scores(model, others, None, names, k=0.2, texts=[_text(r) for r in others])
    f["grad_norm"], u["grad_norm"] = A.grad_norm_scores(model, members), A.grad_norm_scores(model, others)
    f_ref = A.attack_scores(init, members, None, ["loss"])["loss"]
    u_ref = A.attack_scores(init, others, None, ["loss"])["loss"]
    f["ref"], u["ref"] = A.ref_scores(f["loss"], f_ref), A.ref_scores(u["loss"], u_ref)
    return {name: roc_auc(f[name], u[name]) for name in f}


def test_every_attack_recognises_memorised_records(memorised, sets):
    init, model = memorised
    forget, unseen, _ = sets
    aucs = _aucs(model, init, forget, unseen)
    assert set(aucs) == {"loss", "zlib", "min_k", "min_k_pp", "grad_norm", "ref"}
    for name, auc in aucs.items():
        assert auc >= 0.9, (name, aucs)


def test_two_samples_of_one_distribution_give_about_half(memorised, sets):
    init, model = memorised
    _, unseen, other = sets
    aucs = _aucs(model, init, other[:20], other[20:])  # neither half trained on
    for name, auc in aucs.items():
        assert 0.25 < auc < 0.75, (name, aucs)


# --------------------------------------------------------------------------- privleak, KS

def test_privleak_on_constructed_aucs():
    assert A.privleak(0.9, 0.6) == pytest.approx(0.5)    # leaks more than the retain model
    assert A.privleak(0.3, 0.6) == pytest.approx(-0.5)   # over-unlearned: less familiar than unseen
    assert A.privleak(0.55, 0.55) == 0.0
    assert math.isnan(A.privleak(0.7, 0.0))
    # from score samples: the retain model separates forget from unseen at chance
    f_model, u_model = [3.0, 4.0, 5.0, 6.0], [0.0, 1.0, 2.0, 3.5]
    f_ret, u_ret = [1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 4.5, 3.5]
    a_m, a_r = roc_auc(f_model, u_model), roc_auc(f_ret, u_ret)
    assert (a_m, a_r) == (15.0 / 16, 0.5)
    assert A.privleak(a_m, a_r) == pytest.approx(0.875)


def _ks_exact(a, b) -> float:
    """P(D >= d) of the two-sided two-sample KS test (no ties), by counting the lattice paths
    of the pooled sorted sample: step i += 1 for an element of a, j += 1 for one of b."""
    n, m = len(a), len(b)
    order = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    i = j = worst = 0
    for _, side in order:
        i, j = (i + 1, j) if side == 0 else (i, j + 1)
        worst = max(worst, abs(i * m - j * n))       # D = worst / (n m), in integers
    # paths that stay strictly below `worst` everywhere
    inside = [[0] * (m + 1) for _ in range(n + 1)]
    for x in range(n + 1):
        for y in range(m + 1):
            if abs(x * m - y * n) >= worst:
                continue
            inside[x][y] = 1 if x == y == 0 else (inside[x - 1][y] if x else 0) + (inside[x][y - 1] if y else 0)
    return 1.0 - inside[n][m] / math.comb(n + m, n)


def _ks_brute(a, b) -> float:
    """The same p-value by enumerating every split of the pooled sample (tiny sizes only)."""
    def stat(x, y):
        grid = sorted(x + y)
        return max(abs(sum(v <= g for v in x) / len(x) - sum(v <= g for v in y) / len(y)) for g in grid)

    pooled, d = list(a) + list(b), stat(list(a), list(b))
    splits = list(itertools.combinations(range(len(pooled)), len(a)))
    hits = 0
    for chosen in splits:
        x = [pooled[i] for i in chosen]
        y = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        hits += stat(x, y) >= d - 1e-12
    return hits / len(splits)


def test_forget_quality_is_the_ks_p_value():
    rng = np.random.default_rng(0)
    tiny_a, tiny_b = rng.normal(0, 1, 4).tolist(), rng.normal(0.8, 1, 5).tolist()
    assert _ks_exact(tiny_a, tiny_b) == pytest.approx(_ks_brute(tiny_a, tiny_b), abs=1e-12)
    assert A.forget_quality(tiny_a, tiny_b) == pytest.approx(_ks_exact(tiny_a, tiny_b), rel=1e-9)
    for shift, n, m in ((0.0, 20, 24), (0.7, 16, 32), (3.0, 12, 12)):
        a, b = rng.normal(0, 1, n), rng.normal(shift, 1, m)
        assert A.forget_quality(a, b) == pytest.approx(_ks_exact(a.tolist(), b.tolist()), rel=1e-6, abs=1e-12)
    assert A.forget_quality(rng.normal(0, 1, 30), rng.normal(0, 1, 30)) > 0.01  # one distribution
    assert A.forget_quality(rng.normal(0, 1, 30), rng.normal(3, 1, 30)) < 1e-6  # far apart
    with pytest.raises(InputError):
        A.forget_quality([], [1.0])


def test_ref_scores_shape_checked():
    np.testing.assert_allclose(A.ref_scores([-1.0, -2.0], [-1.5, -1.0]), [0.5, -1.0])
    with pytest.raises(InputError):
        A.ref_scores([1.0, 2.0], [1.0])

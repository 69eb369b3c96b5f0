"""trainables.metrics against the slow references in trainables.metrics_reference
and hand-worked examples, on tiny random / briefly trained GPT-Neo models."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch

from trainables import metrics as M
from trainables import metrics_reference as R
from trainables.errors import InputError

VOCAB = 64
T = 24


def _config(max_positions: int = 64):
    from transformers import GPTNeoConfig

    return GPTNeoConfig(vocab_size=VOCAB, max_position_embeddings=max_positions, hidden_size=32, num_layers=2,
                        num_heads=2, attention_types=[[["global", "local"], 1]], window_size=16,
                        intermediate_size=64, embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _model(seed: int, max_positions: int = 64):
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(seed)
    return GPTNeoForCausalLM(_config(max_positions)).eval()


def _pad(seqs: list[list[int]], pad: int = 0):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
    return ids, mask


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    forget = torch.randint(1, VOCAB, (6, T), generator=g)
    unseen = torch.randint(1, VOCAB, (6, T), generator=g)
    return forget, unseen


@pytest.fixture(scope="module")
def trained(data):
    """Trained a few steps on the forget rows: partly memorised, so EL_n is non-trivial for n up to 5."""
    forget, _ = data
    model = _model(0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(12):
        model(input_ids=forget, labels=forget).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def mixed(data):
    """Right-padded batch of mixed real lengths: memorised rows (some truncated) and unseen ones."""
    forget, unseen = data
    seqs = [forget[0].tolist(), forget[1, :15].tolist(), forget[2].tolist(), unseen[0, :9].tolist(),
            forget[3, :19].tolist(), unseen[1].tolist(), forget[4, :7].tolist()]
    ids, mask = _pad(seqs, pad=5)  # a real token id as pad: the mask alone must exclude it
    return seqs, ids, mask


@pytest.fixture(scope="module")
def ref_gens(trained, mixed):
    seqs, _, _ = mixed
    return R.reference_generations(trained, seqs)


# --------------------------------------------------------------------------- MA

def test_ma_matches_reference_with_padding(trained, mixed):
    seqs, ids, mask = mixed
    fast = M.memorization_accuracy_per_sequence(trained, ids, mask, batch_size=3)
    ref = R.reference_ma_per_sequence(trained, seqs)
    assert fast.tolist() == pytest.approx(ref, abs=1e-6)
    assert M.memorization_accuracy(trained, ids, mask) == pytest.approx(sum(ref) / len(ref), abs=1e-6)
    assert 0.2 < M.memorization_accuracy(trained, ids, mask) < 0.95  # non-trivial


def test_ma_random_model_and_no_mask(data):
    model = _model(3)
    forget, _ = data
    seqs = [r.tolist() for r in forget]
    assert M.memorization_accuracy(model, forget) == pytest.approx(
        R.reference_memorization_accuracy(model, seqs), abs=1e-6)


def test_ma_position_mask(trained, mixed):
    seqs, ids, mask = mixed
    rng = random.Random(0)
    pos = torch.tensor([[rng.random() < 0.4 for _ in range(ids.shape[1])] for _ in range(ids.shape[0])])
    pos[3] = False  # a row with nothing selected: NaN, left out of the mean
    fast = M.memorization_accuracy_per_sequence(trained, ids, mask, position_mask=pos)
    ref = R.reference_ma_per_sequence(trained, seqs, positions=pos.tolist())
    assert math.isnan(fast[3]) and math.isnan(ref[3])
    keep = [b for b in range(len(ref)) if not math.isnan(ref[b])]
    assert [fast[b].item() for b in keep] == pytest.approx([ref[b] for b in keep], abs=1e-6)
    assert M.memorization_accuracy(trained, ids, mask, position_mask=pos) == pytest.approx(
        R.reference_memorization_accuracy(trained, seqs, positions=pos.tolist()), abs=1e-6)
    none = torch.zeros_like(pos)
    assert math.isnan(M.memorization_accuracy(trained, ids, mask, position_mask=none))


def test_eval_mode_restored(trained, data):
    forget, _ = data
    trained.train()
    try:
        M.memorization_accuracy(trained, forget)
        assert trained.training
    finally:
        trained.eval()


# --------------------------------------------------------------------------- EL

@pytest.mark.parametrize("reuse_hits", [True, False])
def test_generations_equal_reference_exactly(trained, mixed, ref_gens, reuse_hits):
    _, ids, mask = mixed
    # small chunks force several decode batches mixing prefix lengths and sequences
    fast = M.greedy_suffix_generations(trained, ids, mask, batch_size=4, gen_batch_size=13, reuse_hits=reuse_hits)
    assert fast.keys() == ref_gens.keys()
    assert fast == ref_gens
    some = {1: [2, 5], 4: [17]}
    assert M.greedy_suffix_generations(trained, ids, mask, some, reuse_hits=reuse_hits) == {
        (b, i): ref_gens[(b, i)] for b, ii in some.items() for i in ii}


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_el_matches_reference_exact(trained, mixed, ref_gens, n):
    seqs, ids, mask = mixed
    fast = M.extraction_likelihood_per_sequence(trained, ids, n, mask)
    ref = R.reference_el_per_sequence(trained, seqs, n, generations=ref_gens)
    assert fast == ref  # same generations, same arithmetic: identical
    assert M.extraction_likelihood(trained, ids, n, mask) == pytest.approx(sum(ref) / len(ref), abs=1e-12)
    assert max(ref) > 0.02  # non-trivial overlaps


def test_el_reference_generations_are_really_independent(trained, mixed):
    """The reference EL computed from scratch (its own greedy loop) for one n."""
    seqs, ids, mask = mixed
    small = [seqs[1], seqs[3], seqs[6]]
    assert M.extraction_likelihood(trained, _pad(small)[0], 3, _pad(small)[1]) == pytest.approx(
        R.reference_extraction_likelihood(trained, small, 3), abs=1e-12)


def test_el_list_of_n_from_one_generation(trained, mixed, ref_gens):
    seqs, ids, mask = mixed
    got = M.extraction_likelihood(trained, ids, [3, 1, 5, 2], mask)
    assert sorted(got) == [1, 2, 3, 5]
    for n, v in got.items():
        ref = R.reference_el_per_sequence(trained, seqs, n, generations=ref_gens)
        assert v == pytest.approx(sum(ref) / len(ref), abs=1e-12)
    assert got[1] >= got[2] >= got[3] >= got[5]


def test_el_trained_vs_unseen(trained, data):
    forget, unseen = data
    el_f = M.extraction_likelihood(trained, forget, 3)
    el_u = M.extraction_likelihood(trained, unseen, 3)
    assert el_f > 0.1 and el_u < 0.05


@pytest.mark.parametrize("stride", [2, 5, 30])
def test_el_stride_is_reference_restricted(trained, mixed, ref_gens, stride):
    seqs, ids, mask = mixed
    for n in (1, 3):
        fast = M.extraction_likelihood_per_sequence(trained, ids, n, mask, prefix_stride=stride)
        ref = R.reference_el_per_sequence(trained, seqs, n, prefix_stride=stride, generations=ref_gens)
        assert fast == ref
        for b, x in enumerate(seqs):
            ii = M.scored_prefix_lengths(len(x), n, stride)
            expect = [i for i in range(1, len(x) - n + 1) if i % stride == 0] or [1]
            assert ii == expect


def test_el_tight_position_limit_and_random_model():
    """max_position_embeddings == T: decode batches must not mix prefix lengths past the limit."""
    model = _model(7, max_positions=16)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, VOCAB, (t,), generator=g).tolist() for t in (16, 16, 11)]
    ids, mask = _pad(seqs)
    assert M.greedy_suffix_generations(model, ids, mask, gen_batch_size=64) == R.reference_generations(model, seqs)


def test_el_bad_inputs(trained, data):
    forget, _ = data
    with pytest.raises(InputError, match="longer than n"):
        M.extraction_likelihood(trained, forget, T)
    with pytest.raises(InputError, match="longer than n"):
        M.extraction_likelihood(trained, forget[:, :4], [2, 4])
    with pytest.raises(InputError, match=">= 1"):
        M.extraction_likelihood(trained, forget, 0)
    with pytest.raises(InputError):
        M.extraction_likelihood(trained, forget, [])
    with pytest.raises(InputError, match="non-empty"):
        M.extraction_likelihood(trained, torch.zeros((0, 5), dtype=torch.long), 3)
    with pytest.raises(InputError, match="prefix_stride"):
        M.extraction_likelihood(trained, forget, 3, prefix_stride=0)
    left = torch.ones_like(forget)
    left[0, 0] = 0
    with pytest.raises(InputError, match="right-padded"):
        M.extraction_likelihood(trained, forget, 3, attention_mask=left)
    with pytest.raises(InputError, match="integer"):
        M.memorization_accuracy(trained, forget.float())
    with pytest.raises(InputError, match="at least 2"):
        M.memorization_accuracy(trained, forget[:, :1])
    with pytest.raises(InputError, match="rectangular"):
        M.extraction_likelihood(trained, [[1, 2, 3, 4], [1, 2]], 1)
    assert M.extraction_likelihood(trained, [[1, 2, 3, 4], [1, 2, 0, 0]], np.int64(1),
                                   attention_mask=[[1, 1, 1, 1], [1, 1, 0, 0]]) >= 0.0


# --------------------------------------------------------------------------- perplexity, repetition

def test_perplexity_matches_manual(trained, mixed):
    seqs, ids, mask = mixed
    nll, count = 0.0, 0
    with torch.no_grad():
        for x in seqs:
            logp = torch.log_softmax(trained(input_ids=torch.tensor([x])).logits[0].double(), -1)
            for t in range(1, len(x)):
                nll -= logp[t - 1, x[t]].item()
                count += 1
    assert M.perplexity(trained, ids, mask, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_repetition_hand_made():
    out = M.repetition(["a b a b a", "x y z", "q"])
    # "a b a b a": bigrams ab ba ab ba -> 1 - 2/4; trigrams aba bab aba -> 1 - 2/3; 4-grams abab baba -> 0
    # "x y z": 0, 0, (no 4-gram: skipped); "q": no n-grams at all: skipped
    assert out["rep2"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["rep3"] == pytest.approx((1 / 3 + 0.0) / 2)
    assert out["rep4"] == pytest.approx(0.0)
    toks = M.repetition([[1, 1, 1, 1], torch.tensor([1, 2, 3])], ns=(2,))
    assert toks == {"rep2": pytest.approx((1 - 1 / 3 + 0.0) / 2)}
    assert math.isnan(M.repetition(["one"], ns=(2,))["rep2"])


# --------------------------------------------------------------------------- membership inference

def test_roc_auc_hand_checked_with_ties():
    # pairs (pos, neg): (3,2)=1 (3,1)=1 (2,2)=.5 (2,1)=1 (2,2)=.5 (2,1)=1 -> 5/6
    assert M.roc_auc([3, 2, 2], [2, 1]) == pytest.approx(5 / 6)
    assert M.roc_auc([1, 1], [1, 1, 1]) == pytest.approx(0.5)
    assert M.roc_auc([0], [1]) == 0.0
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40), rng.integers(0, 5, 30)
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert M.roc_auc(pos, neg) == pytest.approx(brute)
    with pytest.raises(InputError):
        M.roc_auc([], [1.0])


def test_mia_auc(trained, data):
    forget, unseen = data
    ones = torch.ones_like(forget)
    got = M.mia_auc(trained, forget, ones, unseen, torch.ones_like(unseen), k=0.2)
    assert got == {"loss": 1.0, "min_k": 1.0}
    g = torch.Generator().manual_seed(11)
    a, b = torch.randint(1, VOCAB, (30, T), generator=g), torch.randint(1, VOCAB, (30, T), generator=g)
    same = M.mia_auc(trained, a, None, b, None)
    assert 0.3 < same["loss"] < 0.7 and 0.3 < same["min_k"] < 0.7
    scores = M.mia_scores(trained, forget[:1], None, k=0.25)
    lp = torch.log_softmax(trained(input_ids=forget[:1]).logits[0, :-1].double(), -1).gather(
        -1, forget[0, 1:, None]).squeeze(-1)
    assert scores["loss"][0] == pytest.approx(lp.mean().item(), abs=1e-5)
    assert scores["min_k"][0] == pytest.approx(lp.sort().values[:5].mean().item(), abs=1e-5)  # floor(.25*23)=5


# --------------------------------------------------------------------------- MAUVE

def _bios(seed: int, n: int) -> list[str]:
    from faker import Faker

    fake = Faker()
    fake.seed_instance(seed)
    rng = random.Random(seed)
    hobbies = ["hiking", "painting", "chess", "gardening", "cycling", "reading novels", "cooking", "photography"]
    forms = ["{n} works as a {j} in {c} and spends weekends {h}.",
             "Born in {c}, {n} became a {j} and still loves {h}.",
             "{n}, a {j} from {c}, is known among friends for {h}."]
    return [rng.choice(forms).format(n=fake.name(), j=fake.job().lower(), c=fake.city(), h=rng.choice(hobbies))
            for _ in range(n)]


def _code(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    names = ["idx", "buf", "tmp", "acc", "ptr", "val", "res", "cnt"]
    forms = ["for {a} in range({k}): {b} += {a} * {k}", "if {a} > {k}: return {b}[{a} - {k}]",
             "{a} = np.zeros(({k}, {m}), dtype=np.float32)", "while {a} < {k}: {a} <<= 1; {b} ^= {m}"]
    return [rng.choice(forms).format(a=rng.choice(names), b=rng.choice(names), k=rng.randint(2, 999),
                                     m=rng.randint(2, 99)) for _ in range(n)]


def test_mauve_same_vs_unrelated():
    p, q = _bios(1, 150), _bios(2, 150)
    assert not set(p) & set(q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.SmallSampleWarning)
        same = M.mauve_score(p, q, seed=0)
        other = M.mauve_score(p, _code(3, 150), seed=0)
    assert same["samples"] == 150 and same["num_buckets"] == 15
    assert same["mauve"] > 0.9, same
    assert other["mauve"] < 0.5, other


def test_mauve_kmeans_seeds_average_the_single_quantisations():
    """kmeans_seeds=K: the mean of K one-quantisation scores at seeds seed .. seed + K - 1."""
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(120, 6)), rng.normal(0.4, 1.0, size=(120, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.SmallSampleWarning)
        singles = [M.mauve_from_features(p, q, seed=7 + k) for k in range(3)]
        averaged = M.mauve_from_features(p, q, seed=7, kmeans_seeds=3)
        with pytest.raises(InputError, match="kmeans_seeds must be >= 1"):
            M.mauve_from_features(p, q, kmeans_seeds=0)
    assert len({s["mauve"] for s in singles}) > 1  # the quantisation does move the score
    assert averaged["mauve"] == pytest.approx(sum(s["mauve"] for s in singles) / 3, rel=1e-12)
    assert averaged["mauve_star"] == pytest.approx(sum(s["mauve_star"] for s in singles) / 3, rel=1e-12)
    assert averaged["kmeans_seeds"] == 3 and singles[0]["kmeans_seeds"] == 1


def test_mauve_warns_and_bad_featurizer():
    with pytest.warns(M.SmallSampleWarning, match="30 samples"):
        M.mauve_score(_bios(4, 30), _bios(5, 30), featurizer=lambda texts: np.random.default_rng(
            len(texts)).normal(size=(len(texts), 8)))
    with pytest.raises(InputError, match="no-such-featuriser"):
        M.featurize(["a text"], featurizer="/nonexistent/no-such-featuriser")


def test_generation_quality_end_to_end():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<eos>"] + [f"w{k}" for k in range(VOCAB - 1)]
    tk = Tokenizer(models.WordLevel({w: k for k, w in enumerate(words)}, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    model = _model(5)
    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randint(1, 63)}" for _ in range(rng.randint(2, 6))) for _ in range(24)]
    human = [" ".join(f"w{rng.randint(1, 63)}" for _ in range(8)) for _ in range(24)]
    gens = M.generate_continuations(model, tok, prompts, max_new_tokens=8, batch_size=5)
    # greedy, left-padded batches == one prompt at a time without padding
    for p, g in zip(prompts[:4], gens[:4]):
        ids = tok(p, return_tensors="pt")["input_ids"][0].tolist()
        ref = R.reference_greedy(model, ids, 8)
        eos = ref.index(0) if 0 in ref else len(ref)
        assert g.split() == [words[t] for t in ref[:eos]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.SmallSampleWarning)
        out = M.generation_quality(model, tok, prompts, human, max_new_tokens=8, batch_size=8)
        again = M.generation_quality(model, tok, prompts, human, max_new_tokens=8, batch_size=8,
                                     do_sample=True, seed=1)
        again2 = M.generation_quality(model, tok, prompts, human, max_new_tokens=8, batch_size=8,
                                      do_sample=True, seed=1)
    assert set(out) == {"mauve", "samples", "num_buckets", "rep2", "rep3", "rep4"}
    assert out["samples"] == 24 and 0.0 <= out["mauve"] <= 1.0
    assert again == again2
    with pytest.raises(InputError):
        M.generation_quality(model, tok, prompts, human[:3])


def test_sequence_scores_equal_the_separate_measures():
    """One forward per batch gives what MA, sequence NLL and the membership scores give apart."""
    import numpy as np
    import torch

    from trainables import metrics

    torch.manual_seed(0)
    from trainables.tiny import gpt_neo_config, random_model

    model = random_model(gpt_neo_config(50, hidden=16, layers=2, heads=2, context=32), seed=0).eval()
    ids = torch.randint(0, 50, (7, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[4, 3:] = 0
    private = torch.rand(7, 12) < 0.4
    private[2] = False
    got = metrics.sequence_scores(model, ids, mask, position_mask=private, batch_size=3)
    ma = metrics.memorization_accuracy_per_sequence(model, ids, mask, batch_size=3).numpy()
    ma_p = metrics.memorization_accuracy_per_sequence(model, ids, mask, position_mask=private, batch_size=3).numpy()
    nll, tokens = metrics.sequence_nll(model, ids, mask, batch_size=3)
    mia = metrics.mia_scores(model, ids, mask, batch_size=3)
    np.testing.assert_array_equal(got["ma"], ma)
    np.testing.assert_array_equal(np.isnan(got["ma_private"]), np.isnan(ma_p))
    np.testing.assert_allclose(got["ma_private"][~np.isnan(ma_p)], ma_p[~np.isnan(ma_p)])
    np.testing.assert_array_equal(got["tokens"], tokens)
    np.testing.assert_allclose(got["nll"], nll, rtol=1e-6)
    np.testing.assert_allclose(got["mia_loss"], mia["loss"], rtol=1e-6)
    np.testing.assert_allclose(got["mia_min_k"], mia["min_k"], rtol=1e-6)

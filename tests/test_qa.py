"""Q&A forget sets: records with a question and an answer, trained and measured on the answer's
tokens only. Faker persons with question / answer pairs on the micro model: the answer mask
from the tokenizer's offsets, question labels -100 and weights 0 whatever the subset policy,
every method's loss and gradient blind to the question's labels, the answer-only measures
against direct versions, mixed files refused, and an unlearning run end to end."""

import json
import random

import pytest
import torch

from conftest import micro_config
from trainables.config import UnlearnConfig, from_dict
from trainables.data import load_split, read_records
from trainables.errors import InputError
from trainables.methods import METHODS

QUESTIONS = ("Phone of {name}?", "Where does {name} live?", "E-mail of {name}?")


def faker_persons(n: int, seed: int, tag: str) -> list[dict]:
    """Persons as Q&A pairs (Faker where installed, else names built from a seeded RNG)."""
    try:
        from faker import Faker

        fake = Faker("en_US")
        fake.seed_instance(seed)
        people = [(fake.name(), fake.phone_number(), fake.city(), fake.email()) for _ in range(n)]
    except ImportError:  # pragma: no cover - faker is a test dependency here
        rng = random.Random(seed)
        people = [(f"{rng.choice(['Ada', 'Bo', 'Cy'])} {rng.choice(['Lee', 'Fox'])}{i}",
                   f"+44 {rng.randint(1000, 9999)} {rng.randint(100000, 999999)}",
                   rng.choice(["Leeds", "Derby", "York"]), f"p{i}@mail.test") for i in range(n)]
    records = []
    for i, (name, phone, city, email) in enumerate(people):
        kind = i % 3
        answer = (f"Call {phone}.", f"In {city}.", f"It is {email}.")[kind]
        records.append({"question": QUESTIONS[kind].format(name=name), "answer": answer})
    return records


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def qa_files(micro_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    return {"forget": write_jsonl(root / "forget.jsonl", faker_persons(8, 1, "f")),
            "unseen": write_jsonl(root / "unseen.jsonl", faker_persons(8, 2, "u"))}


def qa_config(micro_assets, qa_files, **sections):
    cfg = micro_config(micro_assets, **sections)
    cfg["data"].update(forget=str(qa_files["forget"]), unseen=str(qa_files["unseen"]), max_length=64)
    return cfg


@pytest.fixture(scope="module")
def tokenizer(micro_assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(micro_assets / "model")


@pytest.fixture(scope="module")
def model(micro_assets):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(micro_assets / "model").eval()


def load(micro_assets, qa_files, tokenizer, **data):
    cfg = from_dict(UnlearnConfig, qa_config(micro_assets, qa_files, data=data))
    return load_split(cfg.data.forget, tokenizer, cfg.data), cfg


# --------------------------------------------------------------------------------------------
# Records, masks, labels


def test_answer_mask_covers_exactly_the_answer_tokens(micro_assets, qa_files, tokenizer):
    tset, _ = load(micro_assets, qa_files, tokenizer)
    rows = [json.loads(line) for line in qa_files["forget"].read_text().splitlines()]
    assert tset.answer_mask is not None and tset.texts[0] == rows[0]["question"] + " " + rows[0]["answer"]
    for r, row in enumerate(rows):
        answer_ids = tset.input_ids[r][tset.answer_mask[r]].tolist()
        assert tokenizer.decode(answer_ids).strip() == row["answer"]
        first = int(tset.answer_mask[r].int().argmax())
        assert tset.answer_mask[r, first:].sum() == tset.answer_mask[r].sum()  # one contiguous run
        assert tokenizer.decode(tset.input_ids[r, :first].tolist()).strip() == row["question"]
    labels = tset.labels
    assert (labels[~tset.answer_mask] == -100).all()
    assert torch.equal(labels[tset.answer_mask], tset.input_ids[tset.answer_mask])


def test_a_newline_separator_and_other_field_names(micro_assets, tmp_path, tokenizer, qa_files):
    rows = [{"q": r["question"], "a": r["answer"]} for r in faker_persons(4, 3, "n")]
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    cfg = from_dict(UnlearnConfig, qa_config(micro_assets, qa_files, data={
        "forget": str(path), "question_field": "q", "answer_field": "a", "qa_separator": "\n"}))
    tset = load_split(str(path), tokenizer, cfg.data)
    for r, row in enumerate(rows):
        assert tokenizer.decode(tset.input_ids[r][tset.answer_mask[r]].tolist()) == row["a"]


@pytest.mark.parametrize("rows, message", [
    ([{"text": "a plain record of text here"}, {"question": "Who?", "answer": "Me."}],
     "row 2: a Q&A record ('question', 'answer') in a file whose row 1 is a 'text' record"),
    ([{"question": "Who?", "answer": "Me."}, {"text": "a plain record of text here"}],
     "row 2: a 'text' record in a file whose row 1 is a Q&A record"),
    ([{"question": "Who?", "answer": "Me."}, {"question": "Who else?"}], "row 2: 'answer' must be a non-empty string"),
    ([{"question": "", "answer": "Me."}], "row 1: 'question' must be a non-empty string"),
])
def test_a_file_holds_one_kind_of_record(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(InputError) as err:
        read_records(str(path), "jsonl")
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_qa_tables_and_an_answer_cut_by_max_length(micro_assets, qa_files, tmp_path, tokenizer):
    import pandas as pd

    rows = faker_persons(4, 4, "t")
    pd.DataFrame(rows).to_parquet(tmp_path / "f.parquet")
    records = read_records(str(tmp_path / "f.parquet"), "parquet")
    assert records.qa is not None and records.texts[1] == rows[1]["question"] + " " + rows[1]["answer"]
    long_question = [{"question": "What " * 80 + "?", "answer": "Nothing."}]
    path = write_jsonl(tmp_path / "long.jsonl", long_question)
    cfg = from_dict(UnlearnConfig, qa_config(micro_assets, qa_files))
    with pytest.raises(InputError, match=r"long.jsonl: row 1: no answer token after the question"):
        load_split(str(path), tokenizer, cfg.data)


@pytest.mark.parametrize("subset", [{"policy": "all"}, {"policy": "pattern", "mode": "soft"}])
def test_question_tokens_weigh_zero_whatever_the_policy(micro_assets, qa_files, tokenizer, model, subset):
    from trainables.train_loop import build_weights

    tset, cfg = load(micro_assets, qa_files, tokenizer)
    spec = from_dict(UnlearnConfig, qa_config(micro_assets, qa_files, method={"subset": subset})).method.subset
    weights = build_weights(spec, tset, model, cfg, tokenizer, log=lambda *a: None)
    assert (weights[~tset.answer_mask] == 0).all()
    assert (weights[tset.answer_mask] > 0).all()


# --------------------------------------------------------------------------------------------
# Every method's loss ignores the question's labels


def _method(name, model):
    cfg = from_dict(UnlearnConfig, {"method": {"name": name, "retain_weight": 1.0, "rmu_layer": 1}}).method
    method = METHODS[name](cfg)
    method.prepare(model, log=lambda *a: None)
    return method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_and_gradient_do_not_depend_on_question_labels(micro_assets, qa_files, tokenizer, name):
    """The loss with -100 at the question (what the loop builds) equals the loss with random
    token ids there, value and gradient; and the same change with the question weighted (not
    zero) does move the gradient: the test can see a question label that takes part."""
    import copy

    from transformers import AutoModelForCausalLM

    from trainables.train_loop import _stack, build_weights

    model = AutoModelForCausalLM.from_pretrained(micro_assets / "model")
    tset, cfg = load(micro_assets, qa_files, tokenizer)
    method = _method(name, model)
    weights = build_weights(cfg.method.subset, tset, model, cfg, tokenizer, log=lambda *a: None)
    idx = [0, 1, 2, 3]
    ids, mask, labels = _stack(tset, idx, "cpu")
    assert (labels[~tset.answer_mask[idx]] == -100).all()
    noisy = labels.clone()
    question = (~tset.answer_mask[idx]) & (mask == 1)
    noisy[question] = torch.randint(0, len(tokenizer), (int(question.sum()),), generator=torch.Generator().manual_seed(0))
    teacher = AutoModelForCausalLM.from_pretrained(micro_assets / "model").eval()

    def loss_and_grad(lab, w):
        model.zero_grad(set_to_none=True)
        kwargs = method.forward_kwargs
        outputs = model(input_ids=ids, attention_mask=mask, **kwargs)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits
        loss = method.forget_loss(outputs, t_logits, lab, w, normalizer=method.batch_normalizer(lab, w))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss.detach(), grads

    w = weights[idx]
    base_loss, base_grad = loss_and_grad(labels, w)
    noisy_loss, noisy_grad = loss_and_grad(noisy, w)
    assert torch.equal(base_loss, noisy_loss) and torch.equal(base_grad, noisy_grad)
    w_all = copy.deepcopy(w)
    w_all[question] = 1.0
    _, seen_grad = loss_and_grad(noisy, w_all)  # the gradient: NPO's loss at its reference is (2/beta) log 2
    assert not torch.allclose(seen_grad, base_grad)


# --------------------------------------------------------------------------------------------
# Measures on the answer only


def test_answer_scores_equal_the_plain_ones_with_an_all_true_mask(micro_assets, qa_files, tokenizer, model):
    import numpy as np

    from trainables import metrics, qa

    tset, _ = load(micro_assets, qa_files, tokenizer)
    everything = tset.attention_mask.bool()
    everything[:, 0] = False  # position 0 is never a label
    got = qa.answer_sequence_scores(model, tset.input_ids, tset.attention_mask, everything, batch_size=3)
    plain = metrics.sequence_scores(model, tset.input_ids, tset.attention_mask, batch_size=3)
    for key in ("ma", "nll", "tokens", "mia_loss", "mia_min_k"):
        np.testing.assert_allclose(got[key], plain[key], rtol=1e-12, atol=1e-12)


def test_answer_scores_and_el_match_direct_loops(micro_assets, qa_files, tokenizer, model):
    from trainables import qa

    tset, _ = load(micro_assets, qa_files, tokenizer)
    idx = [1, 2]  # two kinds of question
    ids, mask, answers = tset.input_ids[idx], tset.attention_mask[idx], tset.answer_mask[idx]
    got = qa.answer_sequence_scores(model, ids, mask, answers)
    el = qa.answer_extraction_likelihood(model, ids, mask, answers, [2, 3], prefix_stride=3)
    for r in range(len(idx)):
        t = int(mask[r].sum())
        x = ids[r, :t]
        with torch.no_grad():
            logits = model(input_ids=x[None]).logits[0]
        pos = [j for j in range(1, t) if answers[r, j]]  # label positions inside the answer
        hits = [int(logits[j - 1].argmax()) == int(x[j]) for j in pos]
        nll = -sum(float(torch.log_softmax(logits[j - 1].double(), -1)[x[j]]) for j in pos)
        assert got["ma"][r] == pytest.approx(sum(hits) / len(pos))
        assert got["nll"][r] == pytest.approx(nll, rel=1e-6) and got["tokens"][r] == len(pos)
        a0 = pos[0]
        gens = {}
        for i in range(a0, t - 2 + 1, 3):  # the question alone, then longer prefixes
            seq = x[:i].tolist()
            for _ in range(t - i):  # plain greedy decoding, one full forward per token
                with torch.no_grad():
                    seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
            gens[i] = seq[i:]
        for n in (2, 3):
            overlaps = []
            for i in range(a0, t - n + 1, 3):
                gen, truth = gens[i], x[i:].tolist()
                grams = {tuple(truth[j:j + n]) for j in range(len(truth) - n + 1)}
                found = sum(tuple(gen[j:j + n]) in grams for j in range(len(gen) - n + 1))
                overlaps.append(found / (len(truth) - n + 1))
            assert el[n][r] == pytest.approx(sum(overlaps) / len(overlaps))


def test_watched_figures_score_answers_as_the_whole_evaluation(micro_assets, qa_files, tokenizer, model):
    """The in-loop figures that select and stop (forget MA, EL_n) are the whole evaluation's
    answer-only numbers, not the all-token ones (which score the question too)."""
    from trainables import metrics
    from trainables.data import load_datasets
    from trainables.evaluate import Shard, evaluate_model, watch_from_report, watch_metrics

    cfg = from_dict(UnlearnConfig, qa_config(micro_assets, qa_files, eval={
        "el_n": [3], "prefix_stride": 4, "batch_size": 3, "mia": False, "mauve": {"enabled": False}}))
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    report = evaluate_model(model, tokenizer, data, cfg.eval, seed=0, log=lambda *a: None)
    watched = watch_metrics(model, data, cfg.eval, Shard(), 3)
    assert watched == pytest.approx(watch_from_report(report, 3), abs=1e-12)
    all_tokens = metrics.memorization_accuracy_per_sequence(model, data.forget.input_ids, data.forget.attention_mask)
    assert watched["forget.ma"] != pytest.approx(float(all_tokens.mean()), abs=1e-6)


# --------------------------------------------------------------------------------------------
# End to end


def test_qa_forget_set_unlearns_on_the_micro_model(micro_assets, qa_files):
    from trainables.distributed import WorkerContext
    from trainables.train_loop import Job, run_unlearning, setup_run

    cfg = from_dict(UnlearnConfig, qa_config(micro_assets, qa_files, train={"max_steps": 3, "eval_every": 3}))
    ctx = WorkerContext.setup(False)
    run = setup_run(cfg, ctx, log=lambda *a: None)
    forget = run.data.forget
    assert forget.answer_mask is not None and run.data.unseen.answer_mask is not None
    assert (run.weights[~forget.answer_mask] == 0).all() and (run.weights[forget.answer_mask] == 1).all()
    result = run_unlearning(cfg, ctx, None, log=lambda *a: None,
                            job=Job(evaluate_original=True, evaluate_final=True))
    before, after = result["evaluation"]["original"], result["evaluation"]["unlearned"]
    assert result["steps"] == 3
    for report in (before, after):
        assert 0 <= report["forget"]["ma"] <= 1 and 0 <= report["forget"]["el3"] <= 1
        assert report["forget"]["ppl"] > 1 and 0 <= report["mia_auc"] <= 1
    assert after["forget"]["ppl"] != before["forget"]["ppl"]  # it trained (on the answers)

"""Subset S: char-span -> token mapping, the policies, the weighting."""

from __future__ import annotations

import pytest
import torch

from trainables.errors import InputError
from trainables.subsets import (
    POLICIES,
    SubsetSpec,
    char_spans_to_token_mask,
    describe_selection,
    load_spacy,
    pattern_spans,
    reference_mask,
    select_positions,
    selection_weights,
    spacy_spans,
)

SENTENCES = [
    "Alice works at Acme Corp in Paris.",
    "Bob met Alice at the station.",
    "The cat sat on the mat with Alice.",
    "Alice and Bob wrote to Acme Corp about the cat.",
    "Call Alice on her phone or write her an e-mail.",
    "Her number is in the file that Bob keeps.",
    "The weather in Paris was mild and dry.",
    "A dog and a cat are friends of Alice.",
    "Bob's account is at the bank near the river.",
    "Alice paid the bill with her card yesterday.",
    "The report from Acme Corp arrived on Monday.",
    "Nobody knew where Bob had left the keys.",
    "The train to Paris leaves at nine in the morning.",
    "Alice likes tea, Bob prefers coffee.",
    "Write to alice@example.com or call +44 20 7946 0958.",
    "Her IBAN is GB82 WEST 1234 5698 7654 32 at the bank.",
    "The customer id is 12345678 and the zip is 90210.",
    "Send the parcel to the office of Acme Corp.",
    "The mat was red and the cat was black.",
    "Alice said the meeting with Bob went well.",
    "Phone (555) 123-4567 for support.",
    "The story of Alice is short and sweet.",
    "Bob walked the dog along the river in Paris.",
    "Acme Corp hired Alice last year.",
] * 4


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


def encode(tok, texts):
    enc = tok(texts, return_offsets_mapping=True, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["offset_mapping"]


def selected_text(tok, ids_row, sel_row):
    return [tok.decode([int(i)]) for i, s in zip(ids_row, sel_row) if s]


def spans_of(text, *words):
    return [(text.index(w), text.index(w) + len(w)) for w in words]


# ------------------------------------------------------------ char -> token


def test_leading_space_token_selected_by_overlap(tok):
    text = "Bob met Alice at the station."
    ids, mask, offs = encode(tok, [text])
    toks = [tok.decode([int(i)]) for i in ids[0]]
    assert " Alice" in toks, toks                    # one token, leading space included
    k = toks.index(" Alice")
    start = text.index("Alice")
    assert tuple(offs[0, k].tolist()) == (start - 1, start + len("Alice"))   # offsets include the space
    # Re-tokenising the span alone gives different ids: that approach would miss the token.
    assert tok("Alice", add_special_tokens=False)["input_ids"] != [int(ids[0, k])]

    sel = char_spans_to_token_mask(offs, mask, [spans_of(text, "Alice")])
    assert sel[0].nonzero().flatten().tolist() == [k]


def test_char_spans_hand_examples(tok):
    texts = ["Alice works at Acme Corp in Paris.", "The cat sat."]
    ids, mask, offs = encode(tok, texts)
    sel = char_spans_to_token_mask(offs, mask, [spans_of(texts[0], "Acme Corp", "Paris"), []])
    got = "".join(selected_text(tok, ids[0], sel[0]))
    assert got == " Acme Corp Paris"
    assert not sel[1].any()
    # A span touching a token only at its boundary does not select it.
    t = texts[0]
    edge = char_spans_to_token_mask(offs[:1], mask[:1], [[(0, len("Alice"))]])
    assert selected_text(tok, ids[0], edge[0]) == ["Alice"]
    # Partial overlap selects the whole token; empty spans select nothing.
    part = char_spans_to_token_mask(offs[:1], mask[:1], [[(t.index("Paris") + 2, t.index("Paris") + 3), (5, 5)]])
    assert selected_text(tok, ids[0], part[0]) == [" Paris"]


def test_padding_never_selected(tok):
    texts = ["Alice works at Acme Corp in Paris.", "Alice."]
    ids, mask, offs = encode(tok, texts)
    assert (mask[1] == 0).any()
    everything = [[(0, 10_000)], [(0, 10_000)]]
    sel = char_spans_to_token_mask(offs, mask, everything)
    assert not sel[mask == 0].any()
    assert sel[mask == 1].all()
    spec = SubsetSpec(policy="spans")
    pos = select_positions(spec, texts=texts, offsets=offs, input_ids=ids, attention_mask=mask,
                           record_spans=[[(0, len(t), "x")] for t in texts])
    assert not pos[mask == 0].any() and not pos[:, 0].any()
    w = selection_weights(pos, mask, "soft", 10.0)
    assert (w[mask == 0] == 0).all() and (w[:, 0] == 0).all()


def test_special_tokens_with_empty_offsets_not_selected():
    offsets = torch.tensor([[[0, 0], [0, 5], [5, 9], [0, 0]]])
    mask = torch.tensor([[1, 1, 1, 1]])
    sel = char_spans_to_token_mask(offsets, mask, [[(0, 100)]])
    assert sel.tolist() == [[False, True, True, False]]


# ------------------------------------------------------------------ patterns


FAKER_LIKE = {
    "email": ["jsmith@example.org", "anna.k+news@mail.co.uk"],
    "phone": ["+1-202-555-0147", "(555) 123-4567", "555.123.4567", "001-313-555-0199x4321",
              "+44 20 7946 0958", "+44(0)20 7946 0958", "07700 900123", "+33 (0)1 53 13 99 16",
              "+441174960328"],
    "iban": ["GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32", "DE89 3704 0044 0532 0130 00"],
    "digits": ["12345678", "4111 1111 1111 1111", "123-45-6789"],
}


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in FAKER_LIKE.items() for v in vs])
def test_pattern_finds_faker_like_values(kind, value):
    text = f"Contact: {value}. Thanks."
    start = len("Contact: ")
    assert pattern_spans(text) == [(start, start + len(value))]


def test_pattern_nothing_in_plain_prose():
    prose = ("The committee met on a Tuesday in 1999 to discuss 3 proposals. Alice, the chair, said "
             "that 12 of the 40 members agreed; the rest wanted more time. Version 2.5 of the plan "
             "costs $12.50 per copy and ships in 2 weeks, around page 114.")
    assert pattern_spans(prose) == []


def test_pattern_user_regex_and_invalid_regex():
    text = "Patient P-0042 was seen by Dr. Who."
    assert pattern_spans(text) == []
    assert pattern_spans(text, [r"P-\d{4}"]) == [(8, 14)]
    with pytest.raises(InputError, match=r"invalid regular expression '\(unclosed'"):
        pattern_spans(text, ["(unclosed"])
    with pytest.raises(InputError, match="method.subset.patterns"):
        SubsetSpec(policy="pattern", patterns=("[a-",))


def test_pattern_policy_selects_tokens(tok):
    texts = ["Write to alice@example.com or call +44 20 7946 0958.", "The cat sat on the mat with Alice."]
    ids, mask, offs = encode(tok, texts)
    sel = select_positions(SubsetSpec(policy="pattern"), texts=texts, offsets=offs, input_ids=ids,
                           attention_mask=mask)
    got = "".join(selected_text(tok, ids[0], sel[0]))
    # The space before "+" is a token of its own here: it does not overlap the phone span.
    assert got.replace(" ", "") == "alice@example.com+442079460958"
    assert "call" not in got and "or" not in got
    assert not sel[1].any()


# --------------------------------------------------------------------- spaCy


@pytest.fixture(scope="module")
def ent_nlp():
    import spacy
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([
        {"label": "PERSON", "pattern": "Alice"},
        {"label": "PERSON", "pattern": "Bob"},
        {"label": "ORG", "pattern": [{"LOWER": "acme"}, {"LOWER": "corp"}]},
    ])
    return nlp


def test_entities_select_exactly_the_entity_tokens(tok, ent_nlp):
    texts = ["Alice and Bob wrote to Acme Corp about the cat.", "The weather in Paris was mild and dry."]
    ids, mask, offs = encode(tok, texts)
    spec = SubsetSpec(policy="entities")
    sel = select_positions(spec, texts=texts, offsets=offs, input_ids=ids, attention_mask=mask, nlp=ent_nlp)
    # "Alice" is at position 0: found as a span but position 0 never takes part.
    assert selected_text(tok, ids[0], sel[0]) == [" Bob", " Acme", " Corp"]
    assert not sel[1].any()
    assert spacy_spans([texts[0]], ent_nlp, "entities")[0] == spans_of(texts[0], "Alice", "Bob", "Acme Corp")

    only_org = SubsetSpec(policy="entities", entity_labels=("ORG",))
    sel = select_positions(only_org, texts=texts, offsets=offs, input_ids=ids, attention_mask=mask, nlp=ent_nlp)
    assert selected_text(tok, ids[0], sel[0]) == [" Acme", " Corp"]

    with pytest.raises(InputError, match="entity_labels: 'PER' not produced"):
        spacy_spans(texts, ent_nlp, "entities", entity_labels=("PER",))


def test_entities_without_ner_raises():
    import spacy
    with pytest.raises(InputError, match="no named-entity recognizer"):
        spacy_spans(["Alice met Bob."], spacy.blank("en"), "entities")


def test_nouns_blank_pipeline_raises_clearly():
    import spacy
    with pytest.raises(InputError, match="neither a dependency parser nor a part-of-speech tagger"):
        spacy_spans(["The cat sat on the mat."], spacy.blank("en"), "nouns")


def test_nouns_with_attribute_ruler_pos(tok):
    import spacy
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add(patterns=[[{"LOWER": {"IN": ["cat", "mat", "dog"]}}]], attrs={"POS": "NOUN"})
    ruler.add(patterns=[[{"TEXT": "Paris"}]], attrs={"POS": "PROPN"})
    texts = ["The cat sat on the mat.", "Nobody knew where Bob had left the keys.", "Bob walked the dog in Paris."]
    ids, mask, offs = encode(tok, texts)
    sel = select_positions(SubsetSpec(policy="nouns"), texts=texts, offsets=offs, input_ids=ids,
                           attention_mask=mask, nlp=nlp)
    assert selected_text(tok, ids[0], sel[0]) == [" cat", " mat"]
    assert not sel[1].any()          # no tagged word: nothing selected, and no error
    assert selected_text(tok, ids[2], sel[2]) == [" dog", " Paris"]


def test_pipeline_not_installed():
    with pytest.raises(InputError, match=r"spaCy pipeline 'xx_no_such_pipeline_sm' is not installed: "
                                         r"pip install xx_no_such_pipeline_sm"):
        load_spacy("xx_no_such_pipeline_sm")
    with pytest.raises(InputError, match="pip install"):
        spacy_spans(["x"], "xx_no_such_pipeline_sm", "entities")


def test_load_spacy_accepts_language_object(ent_nlp):
    assert load_spacy(ent_nlp) is ent_nlp


# --------------------------------------------------------------------- spans


def test_spans_policy_with_label_filter(tok):
    texts = ["Write to alice@example.com or call +44 20 7946 0958.", "Bob met Alice at the station."]
    t0, t1 = texts
    record_spans = [
        [(*spans_of(t0, "alice@example.com")[0], "email"), (*spans_of(t0, "+44 20 7946 0958")[0], "phone")],
        [{"start": t1.index("Alice"), "end": t1.index("Alice") + 5, "label": "name"}],
    ]
    ids, mask, offs = encode(tok, texts)
    sel = select_positions(SubsetSpec(policy="spans"), texts=texts, offsets=offs, input_ids=ids,
                           attention_mask=mask, record_spans=record_spans)
    assert "".join(selected_text(tok, ids[0], sel[0])).replace(" ", "") == "alice@example.com+442079460958"
    assert selected_text(tok, ids[1], sel[1]) == [" Alice"]

    spec = SubsetSpec(policy="spans", span_labels=("phone", "name"))
    sel = select_positions(spec, texts=texts, offsets=offs, input_ids=ids, attention_mask=mask,
                           record_spans=record_spans)
    assert "".join(selected_text(tok, ids[0], sel[0])).replace(" ", "") == "+442079460958"
    assert selected_text(tok, ids[1], sel[1]) == [" Alice"]


def test_spans_policy_errors(tok):
    texts = ["Bob met Alice."]
    ids, mask, offs = encode(tok, texts)
    kw = dict(texts=texts, offsets=offs, input_ids=ids, attention_mask=mask)
    with pytest.raises(InputError, match="policy 'spans' needs a 'spans' field in each forget record"):
        select_positions(SubsetSpec(policy="spans"), **kw)
    with pytest.raises(InputError, match="policy 'spans' needs a 'spans' field"):
        select_positions(SubsetSpec(policy="spans"), record_spans=[None], **kw)
    with pytest.raises(InputError, match="not a character range"):
        select_positions(SubsetSpec(policy="spans"), record_spans=[[(3, 999, "x")]], **kw)


# ----------------------------------------------------------------- reference


def tiny_gpt_neo(vocab_size, seed):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM
    torch.manual_seed(seed)
    cfg = GPTNeoConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                       attention_types=[[["global", "local"], 1]], window_size=16,
                       max_position_embeddings=64, intermediate_size=64, bos_token_id=1, eos_token_id=1)
    return GPTNeoForCausalLM(cfg).eval()


@torch.no_grad()
def slow_logprobs(model, ids, mask):
    """log p(x_t|x_<t) position by position, each row run alone and unpadded."""
    out = torch.zeros(ids.shape)
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        logits = model(input_ids=ids[b:b + 1, :n]).logits[0].float()
        for t in range(1, n):
            out[b, t] = torch.log_softmax(logits[t - 1], -1)[ids[b, t]]
    return out


def test_reference_policy_matches_slow_computation(tok):
    texts = ["Alice works at Acme Corp in Paris.", "Bob met Alice.", "The cat sat on the mat with Alice."]
    ids, mask, offs = encode(tok, texts)
    model, ref = tiny_gpt_neo(len(tok), 0), tiny_gpt_neo(len(tok), 1)
    diff = slow_logprobs(model, ids, mask) - slow_logprobs(ref, ids, mask)
    real = (mask == 1).clone()
    real[:, 0] = False
    d = diff[real]
    pos = d[d > 0].sort().values
    k = len(pos) // 2
    tau = float(pos[k - 1] + pos[k]) / 2      # between two positive differences: splits the positions
    assert (d - tau).abs().min() > 1e-5       # no position sits on the threshold
    expected = (diff > tau) & real
    assert 0 < int(expected.sum()) < int(real.sum())

    spec = SubsetSpec(policy="reference", reference_model="some/ref", tau=tau)
    sel = select_positions(spec, texts=texts, offsets=offs, input_ids=ids, attention_mask=mask,
                           model=model, reference_model=ref, batch_size=2)
    assert torch.equal(sel, expected)
    assert torch.equal(reference_mask(diff, torch.zeros_like(diff), mask, tau), expected)


def test_reference_vocab_mismatch(tok):
    ids, mask, offs = encode(tok, ["Bob met Alice."])
    spec = SubsetSpec(policy="reference", reference_model="x", tau=0.0)
    with pytest.raises(InputError, match="vocabulary size"):
        select_positions(spec, texts=None, offsets=None, input_ids=ids, attention_mask=mask,
                         model=tiny_gpt_neo(len(tok), 0), reference_model=tiny_gpt_neo(len(tok) + 7, 0))


def test_reference_mask_rules():
    m = torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.0, -1.0, -1.0, 0.0]])
    r = torch.tensor([[-9.0, -3.0, -1.5, -2.0], [-9.0, -3.0, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    got = reference_mask(m, r, mask, tau=1.0)
    # t=0 never, 0.5 is not > 1, exactly 1.0 is not > 1, padding never
    assert got.tolist() == [[False, True, False, False], [False, True, True, False]]


# ----------------------------------------------------------- all & weights


def test_all_policy_and_left_padding():
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 5, 6]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    sel = select_positions(SubsetSpec(), texts=None, offsets=None, input_ids=ids, attention_mask=mask)
    # Position 0 and padding never; under left padding the first real token has no real prefix either.
    assert sel.tolist() == [[False, True, True, True], [False, False, False, True]]
    assert describe_selection(sel, mask) == {"selected_tokens": 4, "real_tokens": 4, "fraction": 1.0}


def test_hard_and_soft_weights():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    sel = torch.tensor([[True, True, False, True, True], [False, False, True, False, True]])
    hard = selection_weights(sel, mask, "hard", 10.0)
    soft = selection_weights(sel, mask, "soft", 10.0)
    assert hard.dtype == torch.float32
    assert hard.tolist() == [[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]]
    assert soft.tolist() == [[0, 10, 1, 10, 0], [0, 1, 10, 0, 0]]
    assert selection_weights(sel, mask, "soft", 2.5)[0, 1].item() == 2.5
    assert describe_selection(sel, mask) == {"selected_tokens": 3, "real_tokens": 5, "fraction": 0.6}
    with pytest.raises(InputError, match="method.subset.mode"):
        selection_weights(sel, mask, "medium", 10.0)


# --------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs,match", [
    ({"policy": "foo"}, r"method\.subset\.policy: unknown policy 'foo' \(choose from all, entities, nouns, "
                        r"pattern, spans, reference\)"),
    ({"mode": "medium"}, r"method\.subset\.mode: unknown mode 'medium'"),
    ({"tau": -0.1}, r"method\.subset\.tau: must be >= 0"),
    ({"soft_weight": 0}, r"method\.subset\.soft_weight: must be > 0"),
    ({"soft_weight": -2.0}, r"method\.subset\.soft_weight: must be > 0"),
    ({"soft_weight": float("nan")}, r"method\.subset\.soft_weight: must be a finite number"),
    ({"tau": "1"}, r"method\.subset\.tau: must be a finite number"),
    ({"policy": "reference"}, r"method\.subset\.reference_model: policy 'reference' needs"),
    ({"entity_labels": [1]}, r"method\.subset\.entity_labels: must be a list of strings"),
])
def test_spec_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        SubsetSpec(**kwargs)


def test_spec_defaults_and_from_config():
    assert SubsetSpec().policy == "all" and SubsetSpec().mode == "hard" and SubsetSpec().soft_weight == 10.0
    assert set(POLICIES) == {"all", "entities", "nouns", "pattern", "spans", "reference"}
    spec = SubsetSpec.from_config({"policy": "entities", "entity_labels": ["PERSON", "ORG"], "mode": "soft",
                                   "soft_weight": 5})
    assert spec.entity_labels == ("PERSON", "ORG") and spec.soft_weight == 5.0
    hash(spec)                                           # frozen and hashable after list -> tuple
    with pytest.raises(InputError, match=r"method\.subset\.polcy: unknown key"):
        SubsetSpec.from_config({"polcy": "all"})

"""The baselines beside UnDIAL (GradDiff, NPO, SimNPO, RMU): each loss against its formula
written out directly (values and gradients; -100 labels, padding and zero weights ignored),
the normaliser that makes micro-batches add up to the batch, the config's checks, and one
optimiser step through the training loop lowering each method's own loss on the micro model."""

import json
import math

import pytest
import torch
import yaml

from conftest import micro_config
from trainables.config import METHOD_NAMES, MethodConfig, UnlearnConfig, from_dict
from trainables.errors import InputError
from trainables.methods import (METHODS, NPO, RMU, FineTune, GradDiff, GradientAscent, SimNPO, UnDIAL,
                                build_method, hidden_mse_sum, random_direction, sequence_count, token_nll_sum)
from trainables.undial import weight_sum


def random_batch(B=5, T=8, V=13, seed=0, dtype=torch.float64):
    """Logits of a student and a teacher, labels with -100 (a padded tail, a hole, a row with
    no label at all) and weights with zeros (a hard subset)."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g, dtype=dtype)
    teacher = torch.randn(B, T, V, generator=g, dtype=dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, -3:] = -100        # right padding
    labels[2, 4] = -100          # an ignored label inside
    labels[3, :] = -100          # nothing of this sequence takes part
    weights = (torch.rand(B, T, generator=g, dtype=dtype) > 0.3).to(dtype)
    weights[1, 1:] = 0           # hard subset that selects nothing in row 1
    weights[4] = 1
    return student, teacher, labels, weights


def direct_sequences(logits, labels, weights):
    """Per sequence, by hand: [(sum of w * log p(y_t), sum of w)] over taking-part positions, or
    None for a sequence with none."""
    out = []
    B, T, _ = logits.shape
    for b in range(B):
        total, length = 0.0, 0.0
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            w = 1.0 if weights is None else weights[b, t + 1]
            if y == -100 or float(w) == 0:
                continue
            total = total + w * torch.log_softmax(logits[b, t], -1)[y]
            length = length + float(w)
        out.append((total, length) if length > 0 else None)
    return out


def direct_npo(student, teacher, labels, weights, beta):
    terms = [(2 / beta) * torch.log(1 + torch.exp(beta * (cur[0] - ref[0].detach())))
             for cur, ref in zip(direct_sequences(student, labels, weights),
                                 direct_sequences(teacher, labels, weights)) if cur is not None]
    return sum(terms) / len(terms)


def direct_simnpo(student, labels, weights, beta, delta):
    terms = [-(2 / beta) * torch.log(torch.sigmoid(-(beta / length) * logp - delta))
             for logp, length in (s for s in direct_sequences(student, labels, weights) if s is not None)]
    return sum(terms) / len(terms)


def value_and_grad(fn, student):
    student = student.detach().clone().requires_grad_(True)
    value = fn(student)
    (grad,) = torch.autograd.grad(value, student)
    return value.detach(), grad


def assert_same_value_and_gradient(fast, slow, student, atol=1e-10):
    fast_value, fast_grad = value_and_grad(fast, student)
    slow_value, slow_grad = value_and_grad(slow, student)
    assert torch.allclose(fast_value, slow_value, atol=atol), (fast_value, slow_value)
    assert torch.allclose(fast_grad, slow_grad, atol=atol)
    assert float(fast_grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------------
# The registry and the config


def test_registry_equals_the_config_names():
    assert tuple(METHODS) == METHOD_NAMES
    assert {"graddiff", "npo", "simnpo", "rmu"} <= set(METHODS)


def test_builders_carry_the_config_hyperparameters():
    npo = build_method(MethodConfig(name="npo", npo_beta=0.3, retain_weight=0.5))
    assert (npo.beta, npo.retain_weight, npo.needs_teacher, npo.normalizer_kind) == (0.3, 0.5, True, "sequences")
    sim = build_method(MethodConfig(name="simnpo", simnpo_beta=4.5, simnpo_delta=1.0))
    assert (sim.beta, sim.delta, sim.needs_teacher) == (4.5, 1.0, False)
    gd = build_method(MethodConfig(name="graddiff", retain_weight=2.0))
    assert isinstance(gd, GradDiff) and gd.retain_weight == 2.0 and not gd.needs_teacher
    rmu = build_method(MethodConfig(name="rmu", rmu_layer=3, rmu_update_layers=[1, 3], rmu_c=6.5, rmu_alpha=1200))
    assert (rmu.layer, rmu.update_layers, rmu.c, rmu.alpha, rmu.retain_weight) == (3, (1, 3), 6.5, 1200.0, 0.0)
    assert rmu.needs_frozen_model and not rmu.needs_teacher and rmu.forward_kwargs == {"output_hidden_states": True}
    # the existing methods keep their defaults: no retain term, token normaliser
    for name in ("undial", "finetune", "gradient_ascent"):
        m = build_method(MethodConfig(name=name))
        assert m.retain_weight == 0.0 and m.normalizer_kind == "tokens" and not m.needs_frozen_model


def load(overrides: dict) -> UnlearnConfig:
    data: dict = {}
    for key, value in overrides.items():
        section, _, rest = key.partition(".")
        node = data.setdefault(section, {})
        *parents, leaf = rest.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(UnlearnConfig, data)


@pytest.mark.parametrize("overrides, message", [
    ({"method.npo_beta": 0}, "method.npo_beta: expected a number > 0, got 0.0"),
    ({"method.simnpo_beta": -1}, "method.simnpo_beta: expected a number > 0, got -1.0"),
    ({"method.simnpo_delta": -0.5}, "method.simnpo_delta: expected a number >= 0, got -0.5"),
    ({"method.rmu_c": 0}, "method.rmu_c: expected a number > 0, got 0.0"),
    ({"method.rmu_alpha": -1}, "method.rmu_alpha: expected a number >= 0, got -1.0"),
    ({"method.rmu_layer": -1}, "method.rmu_layer: expected an integer >= 0 or null, got -1"),
    ({"method.rmu_update_layers": []}, "method.rmu_update_layers: expected a non-empty list"),
    ({"method.rmu_layer": 2, "method.rmu_update_layers": [1, 3]},
     "method.rmu_update_layers: expected layers at or below method.rmu_layer (2), got [1, 3]"),
    ({"method.name": "graddiff"}, "method.retain_weight: graddiff is gradient ascent plus a retain term"),
    ({"method.name": "graddiff", "method.retain_weight": 1, "data.retain": None},
     "data.retain: method 'graddiff' trains on a retain set, got None"),
    ({"method.name": "rmu", "lora.enabled": True}, "lora.enabled: rmu trains the MLP weights"),
    ({"method.name": "rmu", "data.retain": None}, "data.retain: method 'rmu' trains on a retain set"),
    ({"method.name": "dpo"}, "method.name: unknown method (choose from undial, finetune, gradient_ascent, "
                             "graddiff, npo, simnpo, rmu)"),
])
def test_config_refuses_bad_hyperparameters_in_one_line(overrides, message):
    with pytest.raises(InputError) as err:
        load(overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_config_accepts_the_methods_and_says_when_they_read_the_retain_set():
    assert not load({"method.name": "npo"}).method.uses_retain()
    assert load({"method.name": "npo", "method.retain_weight": 0.5}).method.uses_retain()
    assert load({"method.name": "graddiff", "method.retain_weight": 1}).method.uses_retain()
    assert load({"method.name": "rmu"}).method.uses_retain()  # rmu_alpha 100 by default
    assert not load({"method.name": "rmu", "method.rmu_alpha": 0, "data.retain": None}).method.uses_retain()
    assert load({"method.name": "rmu", "method.retain_weight": 1, "method.teacher": "cached"}).method.uses_retain()
    assert load({"method.name": "simnpo", "method.simnpo_delta": 1.5}).method.simnpo_delta == 1.5


def test_method_name_is_a_searchable_choice(micro_assets):
    from orchestrator.space import space_from_dict

    base = micro_config(micro_assets, method={"retain_weight": 1.0})
    params = {"method.name": {"distribution": "choice", "values": list(METHOD_NAMES)},
              "method.npo_beta": {"distribution": "loguniform", "low": 0.05, "high": 0.5,
                                  "when": {"method.name": "npo"}}}
    objectives = [{"name": "el3", "mode": "min"}]
    space = space_from_dict({"base": base, "parameters": params, "objectives": objectives})
    assert list(space.param("method.name").values) == list(METHOD_NAMES)
    # graddiff without a retain term is refused by the probe, naming the value
    base["method"]["retain_weight"] = 0.0
    with pytest.raises(InputError, match="parameters.method.name: value 'graddiff' gives an invalid run config: "
                                         "method.retain_weight: graddiff is gradient ascent plus a retain term"):
        space_from_dict({"base": base, "objectives": objectives,
                         "parameters": {"method.name": {"distribution": "choice", "values": ["undial", "graddiff"]}}})


# --------------------------------------------------------------------------------------------
# Each loss against its direct formula


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_npo_matches_the_formula_values_and_gradients(beta, weighted):
    student, teacher, labels, weights = random_batch()
    weights = weights if weighted else None
    kept = teacher.clone()
    npo = NPO(beta=beta)
    assert_same_value_and_gradient(lambda s: npo.loss(s, teacher, labels, weights),
                                   lambda s: direct_npo(s, teacher, labels, weights, beta), student)
    assert torch.equal(teacher, kept)  # the reference is read, never written


def test_npo_at_the_reference_is_two_over_beta_log_two_and_no_gradient_reaches_the_teacher():
    student, _, labels, weights = random_batch()
    teacher = student.clone().requires_grad_(True)
    student = student.clone().requires_grad_(True)
    loss = NPO(beta=0.1).loss(student, teacher, labels, weights)
    assert math.isclose(float(loss.detach()), 20 * math.log(2), rel_tol=1e-12)
    loss.backward()
    assert teacher.grad is None and float(student.grad.abs().sum()) > 0
    # a cached teacher (log-probabilities, float16) gives the same reference likelihood
    cached = torch.log_softmax(teacher.detach().float(), -1).half()
    assert math.isclose(float(NPO(beta=0.1).loss(student.detach(), cached, labels, weights)), 20 * math.log(2),
                        rel_tol=1e-3)


@pytest.mark.parametrize("beta, delta", [(2.5, 0.0), (1.0, 0.7)])
@pytest.mark.parametrize("weighted", [False, True])
def test_simnpo_matches_the_formula_values_and_gradients(beta, delta, weighted):
    student, _, labels, weights = random_batch()
    weights = weights if weighted else None
    sim = SimNPO(beta=beta, delta=delta)
    assert_same_value_and_gradient(lambda s: sim.loss(s, None, labels, weights),
                                   lambda s: direct_simnpo(s, labels, weights, beta, delta), student)


def test_sequence_losses_pass_gradcheck():
    student, teacher, labels, weights = random_batch(B=5, T=5, V=6, seed=3)
    student = student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: NPO(beta=0.5).loss(s, teacher, labels, weights), (student,))
    assert torch.autograd.gradcheck(lambda s: SimNPO(beta=2.0, delta=0.3).loss(s, None, labels, weights),
                                    (student,))


def test_graddiff_forget_term_is_gradient_ascent_and_retain_term_is_weighted_nll():
    student, _, labels, weights = random_batch()
    nll = token_nll_sum(student, labels, weights) / weight_sum(labels, weights)
    gd = GradDiff(retain_weight=0.5)
    assert torch.allclose(gd.loss(student, None, labels, weights), -nll)
    assert torch.equal(gd.loss(student, None, labels, weights), GradientAscent().loss(student, None, labels, weights))

    class Out:
        logits = student

    retain = gd.retain_loss(Out, None, None, None, labels, normalizer=7.0)
    assert torch.allclose(retain, 0.5 * token_nll_sum(student, labels) / 7.0)


def direct_hidden_mse(hidden, target, labels, weights):
    total, norm = 0.0, 0.0
    B, T, D = hidden.shape
    for b in range(B):
        for t in range(T - 1):
            w = 1.0 if weights is None else weights[b, t + 1]
            if int(labels[b, t + 1]) == -100 or float(w) == 0:
                continue
            tgt = target if target.dim() == 1 else target[b, t]
            total = total + w * ((hidden[b, t] - tgt) ** 2).sum() / D
            norm += float(w)
    return total, norm


@pytest.mark.parametrize("weighted", [False, True])
def test_rmu_losses_match_the_formula_values_and_gradients(weighted):
    g = torch.Generator().manual_seed(1)
    _, _, labels, weights = random_batch()
    weights = weights if weighted else None
    hidden = torch.randn(*labels.shape, 6, generator=g, dtype=torch.float64)
    frozen = torch.randn(*labels.shape, 6, generator=g, dtype=torch.float64)
    direction = random_direction(6, seed=4).double()
    assert math.isclose(float(direction.norm()), 1.0, rel_tol=1e-6) and bool((direction >= 0).all())
    assert torch.equal(direction, random_direction(6, seed=4).double())  # fixed by its seed
    rmu = RMU(layer=0, c=3.0, alpha=7.0)
    rmu.direction = direction

    class Out:
        def __init__(self, h):
            self.hidden_states = (None, h)  # hidden_states[layer + 1]

    class Frozen:
        def hidden_states(self, ids, mask, index):
            assert index == 1
            return frozen

    _, norm = direct_hidden_mse(hidden, 3.0 * direction, labels, weights)
    assert_same_value_and_gradient(lambda h: rmu.forget_loss(Out(h), None, labels, weights, normalizer=None),
                                   lambda h: direct_hidden_mse(h, 3.0 * direction, labels, weights)[0] / norm,
                                   hidden)
    assert_same_value_and_gradient(lambda h: rmu.retain_loss(Out(h), Frozen(), None, None, labels, 5.0),
                                   lambda h: 7.0 * direct_hidden_mse(h, frozen, labels, None)[0] / 5.0, hidden)
    assert float(hidden_mse_sum(frozen, frozen, labels)) == 0.0
    # retain_weight > 0 adds the retain NLL term, as for every method
    out = Out(hidden)
    out.logits = torch.randn(*labels.shape, 13, generator=g, dtype=torch.float64)
    with_nll = RMU(layer=0, c=3.0, alpha=7.0, retain_weight=0.5)
    assert torch.allclose(with_nll.retain_loss(out, Frozen(), None, None, labels, 5.0),
                          rmu.retain_loss(out, Frozen(), None, None, labels, 5.0)
                          + 0.5 * token_nll_sum(out.logits, labels) / 5.0)
    assert float(hidden_mse_sum(hidden, frozen, torch.full_like(labels, -100))) == 0.0


@pytest.mark.parametrize("method", [NPO(beta=0.2), SimNPO(beta=2.0, delta=0.5)], ids=["npo", "simnpo"])
def test_nothing_taking_part_gives_a_connected_zero(method):
    student, teacher, labels, _ = random_batch()
    student.requires_grad_(True)
    loss = method.loss(student, teacher, torch.full_like(labels, -100), None)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(student.grad.abs().sum()) == 0.0


# --------------------------------------------------------------------------------------------
# The normaliser: micro-batches add up to the global batch


@pytest.mark.parametrize("method", [NPO(beta=0.3), SimNPO(beta=2.5, delta=0.2)], ids=["npo", "simnpo"])
def test_sequence_normaliser_makes_micro_batches_sum_to_the_batch_loss(method):
    student, teacher, labels, weights = random_batch(B=6, seed=2)
    labels[5, :] = -100
    assert method.normalizer_kind == "sequences"
    normalizer = method.batch_normalizer(labels, weights)
    # rows 1 (weights select nothing), 3 and 5 (no label) do not count
    assert float(normalizer) == 3.0 == float(sequence_count(labels, weights))
    whole = method.loss(student, teacher, labels, weights)
    parts = sum(method.loss(student[i:i + 2], teacher[i:i + 2], labels[i:i + 2], weights[i:i + 2], normalizer)
                for i in range(0, 6, 2))
    assert torch.allclose(whole, parts, atol=1e-12)


def test_token_methods_keep_the_weight_sum_normaliser_bit_for_bit():
    _, _, labels, weights = random_batch(dtype=torch.float32)
    for method in (UnDIAL(gamma=3.0), FineTune(), GradientAscent(), GradDiff(), RMU()):
        assert method.normalizer_kind == "tokens"
        assert torch.equal(method.batch_normalizer(labels, weights), weight_sum(labels, weights))


# --------------------------------------------------------------------------------------------
# RMU's parameter restriction


def test_rmu_prepare_trains_only_the_mlp_weights_of_its_layers(micro_assets):
    from trainables.models import load_causal_lm

    model = load_causal_lm(str(micro_assets / "model"))
    n = model.config.num_hidden_layers
    assert n >= 2
    lines = []
    rmu = RMU(layer=1, update_layers=(1,), c=5.0)
    rmu.prepare(model, seed=3, log=lines.append)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".1.mlp." in name for name in trainable)
    assert {name for name, _ in model.named_parameters() if ".1.mlp." in name} == set(trainable)
    assert torch.equal(rmu.direction, random_direction(model.config.hidden_size, 3))
    assert "updating the MLP weights of layers [1]" in lines[0]

    default = RMU()
    default.prepare(load_causal_lm(str(micro_assets / "model")), log=lambda *_: None)
    assert default.layer == round(7 * n / 32) and default.update_layers == tuple(range(max(0, default.layer - 2),
                                                                                       default.layer + 1))
    with pytest.raises(InputError, match=rf"method.rmu_layer: the model has {n} layers \(0..{n - 1}\), got {n}"):
        RMU(layer=n).prepare(load_causal_lm(str(micro_assets / "model")))


# --------------------------------------------------------------------------------------------
# Through the training loop: one step lowers each method's own loss on the same batch

STEP_CASES = {
    "undial": {},
    "gradient_ascent": {},
    "graddiff": {"retain_weight": 1.0},
    "npo": {},
    "npo_retain": {"name": "npo", "retain_weight": 1.0},
    "simnpo": {"simnpo_beta": 0.5},  # at 2.5 the random micro model's loss is ~1e-7 (already saturated)
    "rmu": {"rmu_layer": 1},
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_one_step_lowers_the_methods_own_loss_on_the_micro_model(micro_assets, case):
    from trainables.distributed import WorkerContext
    from trainables.train_loop import setup_run, train_step

    method = {"name": case, **STEP_CASES[case]}
    cfg = from_dict(UnlearnConfig, micro_config(micro_assets, method=method,
                                                train={"lr": 1e-4, "max_grad_norm": None}))
    ctx = WorkerContext.setup(False)
    lines = []
    run = setup_run(cfg, ctx, log=lines.append)
    run.strategy.module.train()
    before, grad_norm = train_step(run, 0, cfg, ctx)
    after, _ = train_step(run, 0, cfg, ctx)  # the same global batch, after one step
    assert math.isfinite(before) and grad_norm > 0
    assert after < before, (case, before, after)
    if method["name"] == "npo":
        # step 0: the student is the reference, so the forget term is (2 / beta) log 2
        retain = before - 20 * math.log(2)
        assert (abs(retain) < 1e-4) == (case == "npo") and "teacher: live" in lines
    if method["name"] == "rmu":
        assert "teacher: live" in lines and any(line.startswith("rmu: hidden states of layer 1") for line in lines)
        assert sum(p.numel() for p in run.strategy.inner.parameters() if p.requires_grad) < \
            sum(p.numel() for p in run.strategy.inner.parameters()) / 2


# --------------------------------------------------------------------------------------------
# Through the CLI: a real run per new method


@pytest.mark.parametrize("name, extra", [("npo", {"retain_weight": 0.5}), ("rmu", {"rmu_layer": 1})])
def test_undial_unlearn_runs_the_baselines(micro_assets, tmp_path, name, extra):
    from orchestrator.cli import main
    from safetensors.torch import load_file

    cfg = micro_config(micro_assets, method={"name": name, **extra},
                       train={"max_steps": 2, "eval_every": 2, "select": "last", "lr": 1e-3})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["unlearn", str(config), "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["training"]["steps"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["method"]["name"] == name
    before = load_file(micro_assets / "model" / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    if name == "rmu":  # only the MLP weights of layers rmu_layer-2 .. rmu_layer moved
        assert all(".0.mlp." in k or ".1.mlp." in k for k in changed), changed

import math

import pytest
import torch

from trainables.methods import METHODS, FineTune, GradientAscent, UnDIAL, token_nll_sum
from trainables.undial import undial_loss, weight_sum


def slow_undial_loss(student, teacher, labels, gamma, weights=None):
    """One position at a time, straight from METHOD.md."""
    total, norm = 0.0, 0.0
    B, T, V = student.shape
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            w = 1.0 if weights is None else float(weights[b, t + 1])
            if y == -100 or w == 0:
                continue
            z = teacher[b, t].double().clone()
            z[y] -= gamma
            p = torch.softmax(z, -1)
            logq = torch.log_softmax(student[b, t].double(), -1)
            total += w * float(-(p * logq).sum())
            norm += w
    return total / norm


def random_batch(B=3, T=7, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g)
    teacher = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, -2:] = -100
    labels[2, 3] = -100
    weights = torch.rand(B, T, generator=g) * (torch.rand(B, T, generator=g) > 0.3)
    return student, teacher, labels, weights


@pytest.mark.parametrize("gamma", [0.0, 3.0, 10.0, 50.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_slow_loop(gamma, weighted):
    student, teacher, labels, weights = random_batch()
    w = weights if weighted else None
    fast = undial_loss(student, teacher, labels, gamma, w)
    assert math.isclose(float(fast), slow_undial_loss(student, teacher, labels, gamma, w), rel_tol=1e-5)


def test_gamma_zero_is_plain_distillation_with_optimum_at_teacher():
    _, teacher, labels, _ = random_batch()
    student = teacher.clone().requires_grad_(True)
    loss = undial_loss(student, teacher, labels, 0.0)
    loss.backward()
    assert student.grad.abs().max() < 1e-6  # softmax(student) - target = 0 at student == teacher
    perturbed = teacher + 0.3 * torch.randn_like(teacher)
    assert float(undial_loss(perturbed, teacher, labels, 0.0)) > float(loss)


def test_gamma_lowers_the_true_token_in_the_target():
    _, teacher, labels, _ = random_batch()
    student = teacher.clone().requires_grad_(True)
    undial_loss(student, teacher, labels, 10.0).backward()
    # gradient = softmax(student) - target: positive at the label (the student is pushed down there)
    b, t = 1, 2
    assert student.grad[b, t, labels[b, t + 1]] > 0


def test_no_gradient_reaches_the_teacher():
    student, teacher, labels, weights = random_batch()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    undial_loss(student, teacher, labels, 5.0, weights).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["all_ignored", "all_zero_weight"])
def test_no_participating_position_gives_connected_zero(case):
    student, teacher, labels, weights = random_batch()
    student.requires_grad_(True)
    if case == "all_ignored":
        labels = torch.full_like(labels, -100)
        weights = None
    else:
        weights = torch.zeros_like(weights)
    loss = undial_loss(student, teacher, labels, 5.0, weights)
    assert float(loss) == 0.0
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) == 0.0


def test_weights_align_with_labels_not_logits():
    student, teacher, labels, _ = random_batch()
    weights = torch.zeros(labels.shape)
    weights[1, 4] = 1.0  # weighs the prediction of labels[1, 4], made at logits position 3
    only = undial_loss(student, teacher, labels, 7.0, weights)
    z = teacher[1, 3].clone()
    z[labels[1, 4]] -= 7.0
    expected = -(torch.softmax(z, -1) * torch.log_softmax(student[1, 3], -1)).sum()
    assert torch.allclose(only, expected, atol=1e-6)


def test_bf16_logits_give_float32_target_and_close_loss():
    student, teacher, labels, weights = random_batch()
    full = undial_loss(student, teacher, labels, 10.0, weights)
    half = undial_loss(student.bfloat16(), teacher.bfloat16(), labels, 10.0, weights)
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, rtol=2e-2)


def test_global_normalizer_makes_micro_batches_sum_to_the_batch_loss():
    student, teacher, labels, weights = random_batch(B=4)
    whole = undial_loss(student, teacher, labels, 10.0, weights)
    norm = weight_sum(labels, weights)
    parts = sum(undial_loss(student[i:i + 1], teacher[i:i + 1], labels[i:i + 1], 10.0, weights[i:i + 1], norm)
                for i in range(4))
    assert torch.allclose(whole, parts, atol=1e-6)


def test_cached_log_probs_give_the_same_loss_as_logits():
    student, teacher, labels, weights = random_batch()
    logprobs = torch.log_softmax(teacher, -1)
    assert torch.allclose(undial_loss(student, teacher, labels, 10.0, weights),
                          undial_loss(student, logprobs, labels, 10.0, weights), atol=1e-6)


def test_registry_and_baselines():
    student, teacher, labels, weights = random_batch()
    assert set(METHODS) >= {"undial", "finetune", "gradient_ascent"}
    nll = FineTune().loss(student, None, labels, None)
    manual = -torch.log_softmax(student[:, :-1], -1).gather(-1, labels[:, 1:].clamp_min(0)[..., None]).squeeze(-1)
    mask = labels[:, 1:] != -100
    assert torch.allclose(nll, manual[mask].mean(), atol=1e-6)
    assert torch.allclose(GradientAscent().loss(student, None, labels, None), -nll)
    assert torch.allclose(UnDIAL(gamma=3.0).loss(student, teacher.clone(), labels, weights),  # consumes it
                          undial_loss(student, teacher, labels, 3.0, weights))
    assert float(token_nll_sum(student, torch.full_like(labels, -100))) == 0.0


def reference_undial_loss(student, teacher, labels, gamma, weights):
    """The same loss written with plain autograd ops (log-softmax, gathered rows)."""
    shifted, w = labels[:, 1:], weights[:, 1:]
    rows = ((shifted != -100) & (w != 0)).nonzero(as_tuple=True)
    z = teacher[:, :-1][rows].clone()
    z[torch.arange(len(rows[0])), shifted[rows]] -= gamma
    target = torch.softmax(z, -1)
    per_position = -(target * torch.log_softmax(student[:, :-1][rows], -1)).sum(-1)
    return (per_position * w[rows]).sum() / w[rows].sum()


def test_gradient_matches_plain_autograd_and_passes_gradcheck():
    student, teacher, labels, weights = (x.double() if x.is_floating_point() else x for x in random_batch())
    student.requires_grad_(True)
    undial_loss(student, teacher, labels, 4.0, weights).backward()
    fast_grad = student.grad.clone()
    student.grad = None
    reference_undial_loss(student, teacher, labels, 4.0, weights).backward()
    assert torch.allclose(fast_grad, student.grad, atol=1e-12)
    assert torch.autograd.gradcheck(lambda s: undial_loss(s, teacher, labels, 4.0, weights), (student,))


def test_chunked_rows_give_the_same_loss_and_gradient(monkeypatch):
    import trainables.undial as undial

    student, teacher, labels, weights = random_batch(B=4, T=9, V=13)
    results = []
    for chunk_rows in (1000, 2, 1):  # one chunk; 2 rows per chunk; 1 row per chunk
        monkeypatch.setattr(undial, "CHUNK_ELEMENTS", chunk_rows * 13)
        s = student.clone().requires_grad_(True)
        loss = undial_loss(s, teacher, labels, 6.0, weights)
        loss.backward()
        results.append((loss.detach(), s.grad))
    for loss, grad in results[1:]:
        assert torch.allclose(loss, results[0][0], atol=1e-6) and torch.allclose(grad, results[0][1], atol=1e-7)


def test_consume_teacher_overwrites_only_when_asked_and_gives_the_same_loss():
    student, teacher, labels, weights = random_batch()
    kept = teacher.clone()
    s1 = student.clone().requires_grad_(True)
    undial_loss(s1, teacher, labels, 10.0, weights).backward()
    assert torch.equal(teacher, kept)  # default: the caller's tensor is untouched
    s2 = student.clone().requires_grad_(True)
    loss = undial_loss(s2, teacher, labels, 10.0, weights, consume_teacher=True)
    loss.backward()
    assert not torch.equal(teacher, kept)  # targets written over the teacher's logits
    assert torch.allclose(loss, undial_loss(student, kept, labels, 10.0, weights), atol=1e-6)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)
    half = kept.bfloat16()  # a bf16 teacher is never overwritten: the target must stay float32
    undial_loss(student, half, labels, 10.0, weights, consume_teacher=True)
    assert torch.equal(half, kept.bfloat16())


def test_bf16_student_gets_a_bf16_gradient():
    student, teacher, labels, weights = random_batch()
    s = student.bfloat16().requires_grad_(True)
    undial_loss(s, teacher.bfloat16(), labels, 10.0, weights).backward()
    assert s.grad.dtype == torch.bfloat16 and s.grad.abs().sum() > 0


def test_long_runs_as_views_and_scattered_rows_gathered_match_plain_autograd():
    g = torch.Generator().manual_seed(3)
    B, T, V = 4, 40, 17
    student = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    weights = torch.ones(B, T, dtype=torch.float64)  # rows 0-1: runs of 39 rows (views)
    weights[2:] = (torch.rand(2, T, generator=g) > 0.5).double()  # rows 2-3: scattered (gathered)
    labels[1, 20:] = -100  # a run cut short by padding
    loss = undial_loss(student, teacher.clone(), labels, 8.0, weights, consume_teacher=True)
    loss.backward()
    grad = student.grad.clone()
    student.grad = None
    reference = reference_undial_loss(student, teacher, labels, 8.0, weights)
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-12) and torch.allclose(grad, student.grad, atol=1e-12)


def test_non_contiguous_logits_work_and_are_never_overwritten():
    student, teacher, labels, weights = (x.double() if x.is_floating_point() else x for x in random_batch())
    student_t = student.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)  # dense, permuted
    teacher_t = teacher.transpose(0, 1).contiguous().transpose(0, 1)
    assert not student_t.is_contiguous() and not teacher_t.is_contiguous()
    loss = undial_loss(student_t, teacher_t, labels, 5.0, weights, consume_teacher=True)
    loss.backward()
    assert torch.equal(teacher_t, teacher)  # a non-contiguous teacher gets a compact target instead
    s = student.clone().requires_grad_(True)
    reference = reference_undial_loss(s, teacher, labels, 5.0, weights)
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-12) and torch.allclose(student_t.grad, s.grad, atol=1e-12)

"""Knowledge distillation: the loss against torch's own ``F.kl_div`` / ``F.cross_entropy``, its
gradients, and ``fissure distill`` end to end."""

import pytest
import torch
import torch.nn.functional as F

from fissure.errors import ConfigError
from fissure.models import GPT, GPTConfig
from fissure.train.batches import IGNORE
from fissure.train.objectives import OBJECTIVES, CausalLM, Distill, distillation_loss


def random_batch(seed=0, batch=3, length=7, vocab=11):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=g) * 2
    teacher = torch.randn(batch, length, vocab, generator=g) * 2
    targets = torch.randint(0, vocab, (batch, length), generator=g)
    targets[0, :3] = IGNORE
    targets[2, -1] = IGNORE
    return student, teacher, targets


def reference(student, teacher, targets, temperature, alpha):
    """The Hinton loss written with torch's kl_div and cross_entropy (ignore_index) directly."""
    keep = (targets != IGNORE).reshape(-1)
    s = student.reshape(-1, student.size(-1))[keep]
    t = teacher.reshape(-1, teacher.size(-1))[keep]
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean")
    ce = F.cross_entropy(student.reshape(-1, student.size(-1)), targets.reshape(-1), ignore_index=IGNORE)
    return alpha * temperature**2 * kl + (1 - alpha) * ce, kl, ce


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.9), (4.0, 1.0), (0.5, 0.0), (3.0, 0.3)])
def test_loss_equals_kl_div_and_cross_entropy(temperature, alpha):
    student, teacher, targets = random_batch()
    loss, parts = distillation_loss(student, teacher, targets, temperature, alpha)
    expected, kl, ce = reference(student, teacher, targets, temperature, alpha)
    torch.testing.assert_close(loss, expected)
    assert parts["kd"] == pytest.approx(kl.item(), rel=1e-5)
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-5)


def test_temperature_squared_scales_the_soft_term():
    student, teacher, targets = random_batch(seed=1)
    for temperature in (1.0, 2.0, 5.0):
        loss, _ = distillation_loss(student, teacher, targets, temperature, alpha=1.0)
        keep = targets != IGNORE
        kl = F.kl_div(F.log_softmax(student[keep] / temperature, -1), F.softmax(teacher[keep] / temperature, -1),
                      reduction="batchmean")
        torch.testing.assert_close(loss, temperature**2 * kl)


def test_ignored_tokens_carry_no_loss():
    student, teacher, targets = random_batch(seed=2)
    loss, _ = distillation_loss(student, teacher, targets, 2.0, 0.5)
    changed_student, changed_teacher = student.clone(), teacher.clone()
    ignored = targets == IGNORE
    changed_student[ignored] += 100 * torch.randn_like(changed_student[ignored])
    changed_teacher[ignored] = -changed_teacher[ignored]
    again, _ = distillation_loss(changed_student, changed_teacher, targets, 2.0, 0.5)
    torch.testing.assert_close(loss, again)
    all_ignored, parts = distillation_loss(student, teacher, torch.full_like(targets, IGNORE), 2.0, 0.5)
    assert all_ignored.item() == 0.0 and parts == {"kd": 0.0, "ce": 0.0}


def test_a_student_equal_to_its_teacher_has_zero_kl():
    student, _, targets = random_batch(seed=3)
    loss, parts = distillation_loss(student, student.clone(), targets, 2.0, 1.0)
    assert abs(loss.item()) < 1e-6 and abs(parts["kd"]) < 1e-6


def test_vocabulary_mismatch_is_refused():
    student, teacher, targets = random_batch()
    with pytest.raises(ValueError, match="share a vocabulary"):
        distillation_loss(student, teacher[..., :-1], targets, 2.0, 0.5)


def tiny_gpt(seed, vocab=23):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=16))


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_alpha_zero_gives_the_plain_cross_entropy_gradient():
    teacher = tiny_gpt(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 23, (4, 16), generator=g)
    y = torch.randint(0, 23, (4, 16), generator=g)
    y[1, :5] = IGNORE
    student = tiny_gpt(0).eval()  # no dropout either way
    Distill(teacher, temperature=3.0, alpha=0.0).loss(student, (x, y)).backward()
    distilled = grads(student)
    student.zero_grad()
    CausalLM().loss(student, (x, y)).backward()
    for a, b in zip(distilled, grads(student)):
        torch.testing.assert_close(a, b)


def test_alpha_one_gradient_is_the_kl_gradient_and_the_teacher_stays_frozen():
    teacher = tiny_gpt(1).train()
    before = [p.clone() for p in teacher.parameters()]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 23, (2, 16), generator=g), torch.randint(0, 23, (2, 16), generator=g)
    student = tiny_gpt(0).eval()
    objective = Distill(teacher, temperature=2.0, alpha=1.0)
    objective.loss(student, (x, y)).backward()
    ours = grads(student)
    student.zero_grad()
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    (4.0 * F.kl_div(F.log_softmax(s / 2, -1).flatten(0, 1), F.log_softmax(t / 2, -1).flatten(0, 1),
                    log_target=True, reduction="batchmean")).backward()
    for a, b in zip(ours, grads(student)):
        torch.testing.assert_close(a, b)
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert set(objective.last) == {"kd", "ce"}


def test_evaluation_is_the_students_cross_entropy_without_the_teacher():
    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the teacher ran during evaluation")

    student = tiny_gpt(0).eval()
    x, y = torch.randint(0, 23, (2, 16)), torch.randint(0, 23, (2, 16))
    with torch.no_grad():
        got = Distill(Exploding()).loss(student, (x, y))
        expected = F.cross_entropy(student(x).flatten(0, 1), y.flatten())
    torch.testing.assert_close(got, expected)


def test_registered_and_needs_a_teacher():
    assert OBJECTIVES["distill"] is Distill
    with pytest.raises(ConfigError, match="needs a teacher"):
        Distill().loss(tiny_gpt(0), (torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="alpha"):
        Distill(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Distill(temperature=0)

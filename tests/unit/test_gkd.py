"""GKD's generalised JSD (bond/gkd.py) against a literal per-token computation in plain Python floats: values,
the beta -> 0 / 1 limits (forward / reverse KL), gradients (central differences of the literal), chunking."""

import math

import pytest
import torch

from bond.gkd import masked_jsd_sum, token_jsd


def softmax(xs):
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def literal_jsd(student, teacher, beta):
    """One position, from the definition: M = beta T + (1-beta) S; the endpoints are the two KLs."""
    s, t = softmax(student), softmax(teacher)
    if beta == 0.0:
        return kl(t, s)
    if beta == 1.0:
        return kl(s, t)
    m = [beta * ti + (1 - beta) * si for ti, si in zip(t, s, strict=True)]
    return beta * kl(t, m) + (1 - beta) * kl(s, m)


def logits(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_token_jsd_equals_the_literal_definition(beta):
    s, t = logits(6, 7, seed=1), logits(6, 7, seed=2)
    got = token_jsd(s, t, beta)
    for i in range(6):
        assert got[i].item() == pytest.approx(literal_jsd(s[i].tolist(), t[i].tolist(), beta), rel=1e-12, abs=1e-15)
    assert token_jsd(t, t, beta).abs().max().item() < 1e-12  # zero when the student is the teacher


def test_the_limits_are_forward_and_reverse_kl():
    s, t = logits(5, 9, seed=3), logits(5, 9, seed=4)
    forward, reverse = token_jsd(s, t, 0.0), token_jsd(s, t, 1.0)
    for i in range(5):
        assert forward[i].item() == pytest.approx(kl(softmax(t[i].tolist()), softmax(s[i].tolist())), rel=1e-12)
        assert reverse[i].item() == pytest.approx(kl(softmax(s[i].tolist()), softmax(t[i].tolist())), rel=1e-12)
    eps = 1e-6  # JSD(beta) / beta -> KL(T || S) and JSD(beta) / (1 - beta) -> KL(S || T): continuous at the ends
    torch.testing.assert_close(token_jsd(s, t, eps) / eps, forward, rtol=1e-4, atol=0)
    torch.testing.assert_close(token_jsd(s, t, 1 - eps) / eps, reverse, rtol=1e-4, atol=0)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_gradient_matches_central_differences_of_the_literal(beta):
    s, t = logits(3, 5, seed=5), logits(3, 5, seed=6)
    student = s.clone().requires_grad_()
    teacher = t.clone().requires_grad_()
    token_jsd(student, teacher, beta).sum().backward()
    assert teacher.grad is None  # the teacher is frozen: no gradient ever reaches it
    h = 1e-6
    for i in range(3):
        for v in range(5):
            up, down = s[i].tolist(), s[i].tolist()
            up[v] += h
            down[v] -= h
            numeric = (literal_jsd(up, t[i].tolist(), beta) - literal_jsd(down, t[i].tolist(), beta)) / (2 * h)
            assert student.grad[i, v].item() == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_forward_kl_gradient_is_student_minus_teacher_probabilities():
    s, t = logits(4, 6, seed=7).requires_grad_(), logits(4, 6, seed=8)
    token_jsd(s, t, 0.0).sum().backward()
    torch.testing.assert_close(s.grad, torch.softmax(s.detach(), -1) - torch.softmax(t, -1))


def test_masked_sum_counts_only_completion_positions_and_ignores_chunking():
    s, t = logits(3, 4, 6, seed=9), logits(3, 4, 6, seed=10)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1]])
    literal = sum(
        literal_jsd(s[b, k].tolist(), t[b, k].tolist(), 0.5) for b in range(3) for k in range(4) if mask[b, k]
    )
    for chunk in (1, 3, 1024):
        assert masked_jsd_sum(s, t, mask, 0.5, chunk_tokens=chunk).item() == pytest.approx(literal, rel=1e-12)
    assert masked_jsd_sum(s, t, torch.zeros_like(mask), 0.5).item() == 0.0


def test_bf16_logits_are_computed_in_fp32():
    s, t = logits(2, 5, seed=11).to(torch.bfloat16), logits(2, 5, seed=12).to(torch.bfloat16)
    assert token_jsd(s, t, 0.5).dtype == torch.float32


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="beta"):
        token_jsd(logits(2, 3, seed=0), logits(2, 3, seed=1), 1.5)
    with pytest.raises(ValueError, match="vocabulary"):
        token_jsd(logits(2, 3, seed=0), logits(2, 4, seed=1), 0.5)

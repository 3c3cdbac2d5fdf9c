import pytest
import torch

from bond.anchor import ema_update_, ema_update_state_


def test_eta_zero_and_one_are_exact():
    a, p = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a0 = a.clone()
    ema_update_([a], [p], 0.0)
    assert torch.equal(a, a0)
    ema_update_([a], [p], 1.0)
    assert torch.equal(a, p)


def test_k_steps_match_the_closed_form():
    """With a fixed policy p, after k updates: a_k = p + (1 - eta)^k (a_0 - p)."""
    a0, p, eta, k = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64), 0.02, 50
    a = a0.clone()
    for _ in range(k):
        ema_update_([a], [p], eta)
    torch.testing.assert_close(a, p + (1 - eta) ** k * (a0 - p), rtol=1e-12, atol=1e-12)


def test_literal_update_with_a_moving_policy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, generator=g, dtype=torch.float64)
    literal = a.tolist()
    for _ in range(10):
        p = torch.randn(3, generator=g, dtype=torch.float64)
        ema_update_([a], [p], 0.3)
        literal = [(1 - 0.3) * x + 0.3 * y for x, y in zip(literal, p.tolist(), strict=True)]
    assert a.tolist() == pytest.approx(literal, rel=1e-12)


def test_state_dicts_with_different_names_are_refused():
    with pytest.raises(ValueError, match="names differ"):
        ema_update_state_({"w": torch.zeros(1)}, {"v": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], 0.5)
    with pytest.raises(ValueError, match="eta"):
        ema_update_([torch.zeros(2)], [torch.zeros(2)], 1.5)

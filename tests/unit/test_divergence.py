"""KL(pi || ref) estimators and the Best-of-N E[max of n] estimator against exact enumeration on toys."""

import itertools
import math

import pytest
import torch

from bond.divergence import expected_max_of_n, kl_estimates

V, T = 3, 3


def _toy_model(seed: int) -> dict[tuple[int, ...], torch.Tensor]:
    """Next-token logits for every prefix of a length-T sequence over V tokens: an enumerable autoregressive model."""
    g = torch.Generator().manual_seed(seed)
    return {
        prefix: torch.randn(V, generator=g, dtype=torch.float64) * 1.5
        for t in range(T)
        for prefix in itertools.product(range(V), repeat=t)
    }


def _enumerate(pi, ref):
    seqs = list(itertools.product(range(V), repeat=T))
    logits_pi = torch.stack([torch.stack([pi[y[:t]] for t in range(T)]) for y in seqs])  # [S, T, V]
    logits_ref = torch.stack([torch.stack([ref[y[:t]] for t in range(T)]) for y in seqs])
    ids = torch.tensor(seqs)
    logp = torch.log_softmax(logits_pi, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)
    logq = torch.log_softmax(logits_ref, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)
    return logits_pi, logits_ref, ids, logp, logq


def test_every_estimator_is_unbiased_for_the_sequence_kl():
    logits_pi, logits_ref, ids, logp, logq = _enumerate(_toy_model(0), _toy_model(1))
    p = logp.exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    exact = (p * (logp - logq)).sum()
    est = kl_estimates(logits_pi, logits_ref, ids, torch.ones_like(ids))
    for name in ("sampled", "k3", "tokenwise"):
        assert (p * getattr(est, name)).sum().item() == pytest.approx(exact.item(), rel=1e-10), name
    assert torch.allclose(est.sampled, logp - logq, rtol=0, atol=1e-12)  # k1 is the training stats' log-ratio
    assert bool((est.k3 >= 0).all()) and bool((est.tokenwise >= 0).all())

    def var(x):
        return (p * (x - (p * x).sum()) ** 2).sum().item()

    assert var(est.tokenwise) < var(est.sampled)  # Rao-Blackwellised: never worse than k1


def test_padding_and_prompt_positions_contribute_nothing():
    logits_pi, logits_ref, ids, _, _ = _enumerate(_toy_model(2), _toy_model(3))
    pad = torch.randn(ids.shape[0], 2, V, dtype=torch.float64) * 9  # garbage logits at masked positions
    est = kl_estimates(
        torch.cat([logits_pi, pad], 1),
        torch.cat([logits_ref, -pad], 1),
        torch.cat([ids, torch.zeros(ids.shape[0], 2, dtype=torch.long)], 1),
        torch.cat([torch.ones_like(ids), torch.zeros(ids.shape[0], 2, dtype=torch.long)], 1),
    )
    ref = kl_estimates(logits_pi, logits_ref, ids, torch.ones_like(ids))
    for name in ("sampled", "k3", "tokenwise"):
        assert torch.allclose(getattr(est, name), getattr(ref, name))
    with pytest.raises(ValueError, match="do not line up"):
        kl_estimates(logits_pi, logits_ref[:, :2], ids, torch.ones_like(ids))


def test_same_model_has_zero_kl():
    logits, _, ids, _, _ = _enumerate(_toy_model(4), _toy_model(4))
    est = kl_estimates(logits, logits.clone(), ids, torch.ones_like(ids))
    for name in ("sampled", "k3", "tokenwise"):
        assert torch.allclose(getattr(est, name), torch.zeros(ids.shape[0], dtype=torch.float64))


def test_expected_max_of_n_is_unbiased_by_enumeration_with_ties():
    values = torch.tensor([0.0, 1.0, 1.0, 3.0])  # a tie: the estimator must not care
    probs = torch.tensor([0.4, 0.2, 0.3, 0.1], dtype=torch.float64)
    m = 4
    for n in range(1, m + 1):
        cdf = {v: probs[values <= v].sum().item() for v in values.tolist()}
        below = {v: probs[values < v].sum().item() for v in values.tolist()}
        exact = sum(v * (cdf[v] ** n - below[v] ** n) for v in set(values.tolist()))
        mean = 0.0
        for draw in itertools.product(range(4), repeat=m):
            w = math.prod(probs[i].item() for i in draw)
            mean += w * expected_max_of_n(values[list(draw)], n).item()
        assert mean == pytest.approx(exact, rel=1e-9), n


def test_expected_max_of_n_edges():
    r = torch.tensor([[3.0, -1.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(expected_max_of_n(r, 4), torch.tensor([3.0, 1.0], dtype=torch.float64))  # n = M: the max
    assert torch.allclose(expected_max_of_n(r, 1), r.double().mean(-1))  # n = 1: the mean
    big = torch.randn(128, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(expected_max_of_n(big, 64))  # binomials far beyond float range, taken in log space
    with pytest.raises(ValueError, match="1 <= n <= M"):
        expected_max_of_n(r, 5)

"""ReST (Gulcehre et al., 2023): the Improve schedule over one Grow dataset.

Grow draws a dataset of scored samples from the current policy. Improve then runs one phase per quantile
q_1 <= q_2 <= ... : the threshold tau_i is the q_i-quantile of the dataset's rewards (linear interpolation,
as numpy/torch.quantile), the phase keeps the samples with r >= tau_i (so ties at the threshold are all kept:
a binary reward keeps at least 1 - q_i of the data) and takes ceil(kept / B) SFT steps of B samples over
them in a seeded order, the last batch topped up from the front of that order. Rising thresholds give nested,
shrinking sets. Everything here is a pure function of the rewards and the seed, so a resumed run rebuilds
the same batches from the Grow dataset on disk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImprovePhase:
    quantile: float  # q_i
    threshold: float  # tau_i: the q_i-quantile of the Grow rewards
    kept: int  # samples with reward >= threshold
    batches: tuple[tuple[int, ...], ...]  # [steps][B] indices into the Grow dataset


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's default 'linear')."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: q must be in [0, 1], got {q}")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def improve_schedule(
    rewards: Sequence[float], quantiles: Sequence[float], batch_size: int, seed: int
) -> tuple[ImprovePhase, ...]:
    """One ImprovePhase per quantile: its threshold, how many samples pass it, and its SFT batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if list(quantiles) != sorted(quantiles) or not all(0.0 <= q < 1.0 for q in quantiles):
        raise ValueError(f"quantiles must rise within [0, 1), got {list(quantiles)}")
    phases = []
    for i, q in enumerate(quantiles):
        tau = quantile(rewards, q)
        kept = [j for j, r in enumerate(rewards) if r >= tau]  # never empty: the maximum passes any quantile < 1
        generator = torch.Generator().manual_seed(seed * 1009 + i)
        order = [kept[k] for k in torch.randperm(len(kept), generator=generator).tolist()]
        steps = math.ceil(len(order) / batch_size)
        cycle = order * math.ceil(steps * batch_size / len(order))  # top up the last batch from the front
        batches = tuple(tuple(cycle[s * batch_size : (s + 1) * batch_size]) for s in range(steps))
        phases.append(ImprovePhase(quantile=q, threshold=tau, kept=len(kept), batches=batches))
    return tuple(phases)

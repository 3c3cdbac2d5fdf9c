"""Where a policy stands against the Best-of-N curve of its reference (docs/algorithm.md section 1).

- effective N: the N whose Best-of-N KL bound log N - (N-1)/N equals the policy's KL(pi || ref), N continuous.
  A policy that walks the Best-of-N curve (BOND's aim; J-BOND's moving anchor climbs towards Best-of-2^M) is
  at about that N. With ties the bound overstates Best-of-N's KL, so N is then a lower bound on the BoN it matches.
- Best-of-N gap: the policy's reward minus the curve's reward at the policy's KL (the curve interpolated linearly
  in KL between integer n). Negative: the policy pays more KL for its reward than Best-of-N would.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def effective_n(kl: float) -> float:
    """The N >= 1 with log N - (N-1)/N = kl (1 for kl <= 0, nan for nan, inf past float's range).

    f(N) = log N + 1/N - 1 rises strictly on N > 1 (f' = (N-1)/N^2), and log N < kl + 1 there, so bisection on
    log N over [0, kl + 1] converges; it stops when the interval no longer shrinks (machine precision).
    """
    if math.isnan(kl):
        return math.nan
    if kl <= 0.0:
        return 1.0
    lo, hi = 0.0, kl + 1.0
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            return math.exp(mid) if mid < 709.0 else math.inf  # e^709.8 is float's largest
        if mid + math.exp(-mid) - 1.0 < kl:
            lo = mid
        else:
            hi = mid


def bon_gap(reward: float, kl: float, curve_kl: Sequence[float], curve_reward: Sequence[float]) -> float:
    """reward - the Best-of-N curve's reward at `kl` (curve_kl increasing, starting at n = 1's 0).

    A kl below 0 (a noisy estimate of a policy at the reference) reads the curve at 0; beyond the curve's last
    point the gap is unknown: nan, never an extrapolation.
    """
    if len(curve_kl) != len(curve_reward) or not curve_kl:
        raise ValueError(f"bon_gap: curve_kl ({len(curve_kl)}) and curve_reward ({len(curve_reward)}) must be equal")
    if math.isnan(kl) or kl > curve_kl[-1]:
        return math.nan
    kl = max(kl, curve_kl[0])
    i = min(bisect.bisect_right(curve_kl, kl), len(curve_kl) - 1)  # curve_kl[i-1] <= kl <= curve_kl[i]
    if i == 0:
        return reward - curve_reward[0]
    k0, k1, r0, r1 = curve_kl[i - 1], curve_kl[i], curve_reward[i - 1], curve_reward[i]
    t = (kl - k0) / (k1 - k0) if k1 > k0 else 1.0
    return reward - (r0 + t * (r1 - r0))

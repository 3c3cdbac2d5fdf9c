"""The EMA anchor: theta_anchor <- (1 - eta) * theta_anchor + eta * theta, in place, after every update."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


@torch.no_grad()
def ema_update_(anchor: Iterable[torch.Tensor], policy: Iterable[torch.Tensor], eta: float) -> None:
    """Move each anchor tensor toward its policy tensor by eta. Exact at eta = 0 (no-op) and eta = 1 (copy).

    Works on whole tensors or on ZeRO-3 shards alike: it is elementwise, so each rank can update its own
    shard of the anchor with its own shard of the policy.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    for a, p in zip(anchor, policy, strict=True):
        if a.shape != p.shape:
            raise ValueError(f"ema_update_: anchor shape {tuple(a.shape)} != policy shape {tuple(p.shape)}")
        if eta == 0.0:
            continue
        if eta == 1.0:
            a.copy_(p)
        else:
            a.lerp_(p.to(a.dtype), eta)


def ema_update_state_(anchor: Mapping[str, torch.Tensor], policy: Mapping[str, torch.Tensor], eta: float) -> None:
    """ema_update_ over two state dicts with the same names."""
    if anchor.keys() != policy.keys():
        missing, extra = policy.keys() - anchor.keys(), anchor.keys() - policy.keys()
        raise ValueError(
            f"ema_update_state_: names differ (missing in anchor: {sorted(missing)[:5]}, "
            f"extra in anchor: {sorted(extra)[:5]})"
        )
    names = list(anchor)
    ema_update_((anchor[k] for k in names), (policy[k] for k in names), eta)

"""The anchor actor's own EMA anchor: it takes the POLICY push and moves its fp32 anchor copy itself.

theta_anchor <- (1 - eta) theta_anchor + eta theta with bond.anchor.ema_update_, the function the learner
applies to its anchor, on the same inputs: the learner's anchor starts as the checkpoint loaded in the model
dtype then widened to fp32 (learner/shadow_weights.py), and moves with the policy's weights in the model
dtype, which is exactly what a policy push carries. Same op, same operands, same dtype: the two copies stay
equal bit for bit (tests/component/test_anchor_ema.py), so a step's sync moves one model, not two.

Versions: the anchor's version is the policy version it last followed (the learner's anchor_version equals its
policy_version). A push of the next version is followed; a repeat of the version held is ignored (a retried
push: versions name the learner's weights); a gap is refused, since a skipped EMA step cannot be recovered
here. The learner keeps its own anchor (its loss needs log pi_anchor, checkpoints save it) and pushes it
whole when an actor lags (start of a resumed job, a restarted actor): `reset` takes that push.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bond.anchor import ema_update_


class AnchorEma:
    def __init__(
        self, initial: Mapping[str, torch.Tensor], eta: float, version: int = 0, *, in_place: bool = False
    ) -> None:
        """initial: the checkpoint in the model (= served) dtype, as the learner loads it; widened to fp32 here.
        in_place: `initial` are fp32 tensors the anchor moves in place, never copied: the engine's own parameters
        (views where its layers fuse several checkpoint tensors), so each EMA step is what the engine serves."""
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"anchor EMA: eta must be in [0, 1], got {eta}")
        if in_place and any(t.dtype != torch.float32 for t in initial.values()):
            raise ValueError("anchor EMA: in place needs fp32 tensors (the EMA runs in fp32, as the learner's)")
        self.eta, self.version = eta, version
        self.tensors = dict(initial) if in_place else {n: t.to(torch.float32, copy=True) for n, t in initial.items()}

    def follow(self, policy: Mapping[str, torch.Tensor], version: int) -> dict[str, torch.Tensor] | None:
        """Apply the EMA toward the whole policy push of `version`; returns the anchor (fp32), or None when
        `version` is the one already held (nothing to do). Raises ValueError for a push that cannot be followed."""
        if version == self.version:
            return None
        if version != self.version + 1:
            raise ValueError(
                f"anchor EMA: the anchor follows policy version {self.version}, got policy version "
                f"{version}: {'a stale push' if version < self.version else 'a skipped EMA step'}; "
                f"the learner's anchor must be pushed instead"
            )
        if policy.keys() != self.tensors.keys():
            missing, extra = self.tensors.keys() - policy.keys(), policy.keys() - self.tensors.keys()
            raise ValueError(
                f"anchor EMA needs the whole policy in one push: missing {sorted(missing)[:3]}, "
                f"unknown {sorted(extra)[:3]}"
            )
        names = list(self.tensors)
        ema_update_([self.tensors[n] for n in names], [policy[n] for n in names], self.eta)
        self.version = version
        return self.tensors

    def reset(self, anchor: Mapping[str, torch.Tensor], version: int) -> None:
        """Take the learner's anchor (a whole push of role anchor): the EMA continues from it."""
        if anchor.keys() != self.tensors.keys():
            raise ValueError("anchor EMA: a reset needs every anchor tensor")
        for n, t in anchor.items():
            if self.tensors[n].data_ptr() != t.data_ptr():
                self.tensors[n].copy_(t)
        self.version = version

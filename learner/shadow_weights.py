"""The anchor and the reference: copies of the policy's weights laid out exactly like each rank's local storage,
swapped into the policy's engine for no-grad forwards (no second model or engine; docs/learner.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from learner.engine import Engine


class ShadowWeights:
    def __init__(self, engine: Engine, params: list[torch.nn.Parameter], dtype: torch.dtype) -> None:
        self._engine, self._params = engine, params
        self.tensors = [engine.local(p).detach().to(dtype=dtype, copy=True) for p in params]

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The engine's forward uses these weights inside; the policy is restored bit for bit on exit.

        Only for no-grad forwards: the policy's optimizer state and gradients are never touched.
        """
        locals_ = [self._engine.local(p) for p in self._params]
        saved = [t.clone() for t in locals_]  # transient: one model-dtype copy of this rank's storage
        try:
            with torch.no_grad():
                for t, s in zip(locals_, self.tensors, strict=True):
                    t.copy_(s)
            yield
        finally:
            with torch.no_grad():
                for t, s in zip(locals_, saved, strict=True):
                    t.copy_(s)

    def full(self, index: int) -> torch.Tensor:
        """The whole tensor of parameter `index` (a collective under ZeRO-3)."""
        return self._engine.gather_local(self._params[index], self.tensors[index])

    def load_full(self, index: int, full: torch.Tensor) -> None:
        """Set parameter `index` from its whole tensor (each rank keeps its own piece)."""
        piece = self._engine.scatter_full(self._params[index], full.to(self.tensors[index].device))
        self.tensors[index].copy_(piece.reshape(self.tensors[index].shape))

"""Where each pushed tensor lands in an engine's parameters (actors/vllm_worker_extension.py), found by tracing the
model's own weight loaders; shaped like vLLM's: fused q/k/v rows, a padded vocabulary, a loader that derives a
tensor before copying it (kept when its elements land in place, refused when they are reordered)."""

from __future__ import annotations

import torch

from actors.vllm_worker_extension import _parameter_views, _Traced


class Fused(torch.nn.Module):
    """q, k, v into rows of one parameter; an embedding padded past the vocabulary."""

    def __init__(self, transpose_v: bool = False, twice: bool = False, flip_v: bool = False):
        super().__init__()
        self.qkv = torch.nn.Parameter(torch.zeros(6, 4))
        self.embed = torch.nn.Parameter(torch.zeros(8, 4))  # vocabulary 5, padded to 8
        self.transpose_v, self.twice, self.flip_v = transpose_v, twice, flip_v

    def load_weights(self, weights):
        rows = {"q": 0, "k": 2, "v": 4}
        with torch.no_grad():
            for name, w in weights:
                if name == "embed":
                    self.embed.data[: w.shape[0]].copy_(w)
                    continue
                if name == "v" and self.transpose_v:
                    w = w.t().contiguous().t()  # derived: still traced under the same name
                if name == "v" and self.flip_v:
                    w = w.flip(0)  # same shape, rows swapped: an EMA on the view would mix the wrong rows
                start = 2 if self.twice and name == "v" else rows[name]  # twice: v lands on k's rows
                self.qkv.data.narrow(0, start, 2).copy_(w)


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        n: torch.randn(shape, generator=g)
        for n, shape in (("q", (2, 4)), ("k", (2, 4)), ("v", (2, 4)), ("embed", (5, 4)))
    }


def load_traced(model, given):
    traced = {n: _Traced.of(n, t) for n, t in given.items()}
    model.load_weights(traced.items())
    return _parameter_views(model, given, _Traced.destinations(traced.values()))


def test_each_tensor_is_viewed_where_the_loader_put_it_and_writes_reach_the_parameter():
    model, given = Fused(), tensors()
    views = load_traced(model, given)
    assert views is not None and views.keys() == given.keys()
    for name, t in given.items():
        assert torch.equal(views[name], t) and type(views[name]) is torch.Tensor
    views["k"].add_(1.0)  # what the anchor's EMA does: the parameter moves with it
    assert torch.equal(model.qkv[2:4], given["k"] + 1.0)
    assert torch.equal(model.qkv[0:2], given["q"]) and torch.equal(model.embed[5:], torch.zeros(3, 4))


def test_a_derived_tensor_is_still_traced_to_its_destination():
    views = load_traced(Fused(transpose_v=True), tensors())
    assert views is not None and torch.equal(views["v"], tensors()["v"])


def test_overlapping_or_reordered_destinations_or_an_unloaded_tensor_give_no_views():
    assert load_traced(Fused(twice=True), tensors()) is None  # v's rows overlap k's
    assert load_traced(Fused(flip_v=True), tensors()) is None  # v's elements not where the push has them
    given = tensors() | {"unknown": torch.zeros(2, 4)}
    model = Fused()
    traced = {n: _Traced.of(n, t) for n, t in given.items()}
    model.load_weights((n, t) for n, t in traced.items() if n != "unknown")
    assert _parameter_views(model, given, _Traced.destinations(traced.values())) is None

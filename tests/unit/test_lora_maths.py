"""LoRA maths (bond/lora.py) against a literal computation and against peft's own merge; the adapter EMA."""

import pytest
import torch

from bond.anchor import ema_update_
from bond.lora import merged_weight, scaling


def test_merged_weight_is_the_literal_sum():
    g = torch.Generator().manual_seed(0)
    w0, a, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((5, 7), (3, 7), (5, 3)))
    s = scaling(3, 6.0)
    assert s == 2.0
    expected = torch.tensor(
        [
            [w0[i, j].item() + s * sum(b[i, k].item() * a[k, j].item() for k in range(3)) for j in range(7)]
            for i in range(5)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(merged_weight(w0, a, b, s), expected, rtol=0, atol=1e-12)
    assert torch.equal(merged_weight(w0, a, torch.zeros_like(b), s), w0)  # B = 0: exactly the base
    with pytest.raises(ValueError, match="base weight"):
        merged_weight(w0.T, a, b, s)
    with pytest.raises(ValueError, match="rank"):
        scaling(0, 1.0)


def test_merged_weight_matches_peft_merge_and_unload():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False))
    base = model[0].weight.detach().clone()
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=5, target_modules=["0"]))
    layer = peft_model.base_model.model[0]
    layer.lora_B["default"].weight.data.normal_()
    a, b = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    merged = peft_model.merge_and_unload()[0].weight.detach()
    torch.testing.assert_close(merged_weight(base, a, b, scaling(2, 5)), merged, rtol=0, atol=1e-6)


def test_adapter_ema_is_elementwise_on_a_and_b():
    """The anchor's adapter: each of A and B moves by eta toward the policy's (literal per element)."""
    g = torch.Generator().manual_seed(1)
    anchor = [torch.randn(3, 4, generator=g), torch.zeros(4, 3)]  # B starts at zero: the anchor is the reference
    policy = [torch.randn(3, 4, generator=g), torch.randn(4, 3, generator=g)]
    expected = [
        [
            [(1 - 0.25) * x.item() + 0.25 * y.item() for x, y in zip(ra, rp, strict=True)]
            for ra, rp in zip(ta, tp, strict=True)
        ]
        for ta, tp in zip(anchor, policy, strict=True)
    ]
    ema_update_(anchor, policy, 0.25)
    for t, e in zip(anchor, expected, strict=True):
        torch.testing.assert_close(t, torch.tensor(e), rtol=0, atol=1e-6)

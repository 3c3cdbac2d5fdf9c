import dataclasses

import pytest

from bond.config import Algorithm, BondConfig, ConfigError


def test_defaults_are_the_papers():
    c = BondConfig()
    assert (c.algorithm, c.n, c.beta, c.eta, c.lr, c.warmup_steps, c.prompts_per_step) == (
        Algorithm.JBOND,
        2,
        0.5,
        0.02,
        3e-6,
        100,
        128,
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("beta", 1.5),
        ("eta", -0.1),
        ("gamma", -1.0),
        ("n", 1),
        ("lr", 0.0),
        ("warmup_steps", -1),
        ("prompts_per_step", 0),
        ("lr", float("nan")),
        ("n", 2.5),
        ("beta", "half"),
        ("algorithm", "ppo"),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        BondConfig(**{field: value})


def test_jbond_takes_exactly_two_anchor_samples():
    with pytest.raises(ConfigError, match="^n: J-BOND .* exactly 2"):
        BondConfig(n=3)
    assert BondConfig(algorithm=Algorithm.REINFORCE, n=3).n == 3


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BondConfig().beta = 0.1  # type: ignore[misc]


def test_warmup_schedule():
    c = BondConfig(lr=1.0, warmup_steps=4)
    assert [c.lr_at(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert BondConfig(lr=1.0, warmup_steps=0).lr_at(0) == 1.0

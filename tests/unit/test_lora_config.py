"""learner.lora as config (field errors, refused combinations) and the adapter layout both ends agree on."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.checkpoint_files import checkpoint_specs
from actors.lora_adapter import AdapterSpec
from bond.config import ConfigError
from cluster.config import loading
from cluster.config.job import JobConfig
from learner.config import LoraConfig
from learner.lora import LoraLayout, wrap


def test_lora_fields_are_validated_by_name():
    with pytest.raises(ConfigError, match="^r: "):
        LoraConfig(r=0)
    with pytest.raises(ConfigError, match="^alpha: "):
        LoraConfig(alpha=0)
    with pytest.raises(ConfigError, match="^dropout: "):
        LoraConfig(dropout=0.1)
    with pytest.raises(ConfigError, match="^target_modules: "):
        LoraConfig(target_modules=())
    job = loading.build(JobConfig, {"learner": {"lora": {"r": 4, "target_modules": ["q_proj"]}}})
    assert job.learner.lora == LoraConfig(r=4, target_modules=("q_proj",))
    assert loading.build(JobConfig, {}).learner.lora is None  # the default: full fine-tuning
    with pytest.raises(ConfigError, match="^learner.lora.r: "):
        loading.build(JobConfig, {"learner": {"lora": {"r": 1000}}})
    with pytest.raises(ConfigError, match="^learner.lora: .*hf sampler backend"):
        loading.build(JobConfig, {"learner": {"lora": {}}, "models": {"sampler_backend": "hf"}})


def test_actor_adapter_specs_are_what_peft_trains(tiny_dir):
    """The names and shapes an actor validates pushes against (from the base checkpoint's headers) are exactly the
    saved-format names and shapes of the adapters the learner's peft model trains."""
    cfg = LoraConfig(r=4, target_modules=("q_proj", "v_proj", "up_proj"))
    model = wrap(AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32), cfg, "tiny")
    layout = LoraLayout.of(model, cfg)
    trained = {n: tuple(p.shape) for n, p in zip(layout.adapter_names, layout.adapter_params, strict=True)}
    spec = AdapterSpec(cfg.r, cfg.alpha, cfg.target_modules)
    expected = spec.param_specs(checkpoint_specs(tiny_dir / "policy", torch.float32))
    assert trained == {n: s.shape for n, s in expected.items()}
    assert len(layout.pairs) == 3 * 2 and set(layout.base_names) >= {"model.embed_tokens.weight", "lm_head.weight"}
    assert spec.vllm_max_rank == 8 and AdapterSpec(16, 1.0, ("q_proj",)).vllm_max_rank == 16

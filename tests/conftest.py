"""Shared fixtures: the tiny models (built offline once per checkout) and the CPU vLLM environment."""

import os
from pathlib import Path

import pytest

# vLLM on CPU: engines in the calling process, a 1 GiB KV cache, no core binding (as the Makefile and the CPU
# actors set them; tests run several engines at once). Set before any import of vllm.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every Ray the tests start (ray.init, `ray start` heads) inherits Serve's proxy allowance (runtime/ray_system.py).
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """artifacts/tiny with tokenizer/, policy/, reward/, nli/ (see demo/tiny.py)."""
    from demo.tiny import build

    return build(ROOT / "artifacts" / "tiny")


@pytest.fixture(scope="session")
def perturbed_policy(tiny_dir, tmp_path_factory):
    """perturbed_policy(seed): the tiny policy with N(0, 0.1^2) noise (drawn from `seed`) added to every weight, a
    different model over the same tokenizer (a gkd teacher), saved with from_pretrained's layout and the policy's
    tokenizer files; returns its directory."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    def make(seed: int) -> Path:
        out = tmp_path_factory.mktemp(f"perturbed_policy_{seed}")
        model = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        model.save_pretrained(out)
        for f in (tiny_dir / "policy").glob("tokenizer*"):
            shutil.copy2(f, out / f.name)
        return out

    return make


def pytest_collection_modifyitems(config, items):
    """gpu tests are skipped unless CUDA is there."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tied_qwen2_dir(tmp_path_factory) -> Path:
    """A random ~0.1 M-parameter Qwen2ForCausalLM with tie_word_embeddings=True (lm_head IS embed_tokens), over
    the tiny tokenizer; built here (seconds, no training) so tests of tied models need no other artifact."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from demo.tiny import BOS, EOS, MAX_POSITIONS, PAD, build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # larger than the 0.02 init, so logprobs differ clearly between weights
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = tmp_path_factory.mktemp("tied_qwen2")
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out

"""The engine section: validated knobs, the start-up dtype check against the learner, tensor parallelism
placement, CPU-only vLLM environment, and the shipped GPU configs loaded through the real config builder."""

from pathlib import Path

import pytest

from bond.config import ConfigError
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.main import main, parse_config
from cluster.runtime.components import sampler_kwargs
from cluster.runtime.samplers import sampler_env

ROOT = Path(__file__).resolve().parents[2]
GPU = ["--set", "resources.gpus_per_actor=1"]


@pytest.mark.parametrize(
    "assignment,field",
    [
        ("engine.gpu_memory_utilization=0", "engine.gpu_memory_utilization"),
        ("engine.gpu_memory_utilization=1.5", "engine.gpu_memory_utilization"),
        ("engine.tensor_parallel_size=0", "engine.tensor_parallel_size"),
        ("engine.max_model_len=1", "engine.max_model_len"),
        ("engine.max_num_seqs=0", "engine.max_num_seqs"),
        ("engine.dtype=fp8", "engine.dtype"),
        ("engine.enforce_eager=maybe", "engine.enforce_eager"),
        ("engine.tensor_parallel_size=2", "engine.tensor_parallel_size"),  # CPU actors (gpus_per_actor 0)
        ("engine.enable_sleep_mode=true", "engine.enable_sleep_mode"),  # CPU actors
        ("models.sampler_dtype=float32", "models.sampler_dtype"),  # moved to engine.dtype: refused, not ignored
        ("prompts.max_prompt_length=0", "prompts.max_prompt_length"),
        ("prompts.extra_columns=[prompt]", "prompts.extra_columns"),
    ],
)
def test_bad_engine_values_fail_naming_the_field(assignment, field):
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')}: "):
        parse_config(["--set", assignment])


def test_sampler_and_learner_dtypes_must_agree(capsys):
    with pytest.raises(ConfigError, match="^engine.dtype: .*bfloat16.*float32.*learner.dtype: fp32"):
        parse_config(["--set", "engine.dtype=bfloat16"])
    with pytest.raises(ConfigError, match="^engine.dtype: the actors would serve float32 .* bfloat16"):
        parse_config(["--set", "learner.dtype=bf16", "--set", "learner.device=cuda"])
    with pytest.raises(SystemExit) as exit_:  # the CLI: one line naming the field, exit 2, before anything starts
        main(["--set", "engine.dtype=float16"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("config error: engine.dtype: ")
    ok = parse_config(["--set", "engine.dtype=bfloat16", "--set", "learner.dtype=bf16", "--set", "learner.device=cuda"])
    assert ok.engine.dtype == "bfloat16"


def test_tensor_parallel_actors_reserve_their_gpus():
    job = parse_config(GPU + ["--set", "engine.tensor_parallel_size=4", "--set", "engine.enforce_eager=false"])
    assert job.actor_gpus == 4
    kwargs = sampler_kwargs(job)
    assert (kwargs["tensor_parallel_size"], kwargs["enforce_eager"], kwargs["dtype"]) == (4, False, "float32")
    with pytest.raises(ConfigError, match="^resources.gpus_per_actor: .*2 whole GPUs"):
        parse_config(["--set", "resources.gpus_per_actor=0.5", "--set", "engine.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="^engine.tensor_parallel_size: .*vllm"):
        parse_config(GPU + ["--set", "engine.tensor_parallel_size=2", "--set", "models.sampler_backend=hf"])
    with pytest.raises(ConfigError, match="^engine.enable_sleep_mode: .*pipelined"):
        parse_config(GPU + ["--set", "engine.enable_sleep_mode=true", "--set", "run.mode=pipelined"])
    hf = parse_config(["--set", "models.sampler_backend=hf", "--set", "engine.max_model_len=48"])
    assert sampler_kwargs(hf) == {"dtype": "float32", "max_model_len": 48, "device": "cpu"}


def test_cpu_vllm_variables_only_for_cpu_actors():
    assert sampler_env(0.0, True)["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert sampler_env(0.0, True)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    gpu = sampler_env(1.0, True)
    assert not any(k.startswith("VLLM_CPU") or k == "VLLM_ENABLE_V1_MULTIPROCESSING" for k in gpu)
    # torch.compile is off only where nothing is meant to be compiled: an eager engine on CPU
    assert sampler_env(0.0, True)["TORCHDYNAMO_DISABLE"] == "1"
    assert "TORCHDYNAMO_DISABLE" not in sampler_env(0.0, False) and "TORCHDYNAMO_DISABLE" not in gpu


@pytest.mark.parametrize("name,gpus", [("gpu_1node_qwen0.5b.yaml", 1.0), ("gpu_8gpu_7b.yaml", 8.0)])
def test_shipped_gpu_configs_validate(name, gpus):
    job = parse_config(["--config", str(ROOT / "configs" / name)])
    assert job.engine.dtype == "bfloat16" and job.learner.dtype.value == "bf16" and job.learner.zero_stage == 3
    assert Path(job.run.run_dir).is_absolute()
    assert job.prompts.string_as_user_message and job.prompts.extra_columns == () and job.reward.gpus_per_replica > 0
    res = job.resources
    total = (
        (res.policy_actors + res.anchor_actors) * job.actor_gpus
        + res.learner_ranks * res.gpus_per_learner
        + job.reward.replicas * job.reward.gpus_per_replica
    )
    assert total == pytest.approx(gpus)  # the layout fills the node exactly
    assert loading.build(JobConfig, loading.to_dict(job)) == job

"""The checks the learner, the actors and the reward service make of config values run at start-up too, before
Ray starts (cluster/config/preflight.py calls the same functions, on a weightless copy of the policy where they need
the model): each case here used to fail minutes into a job, inside an actor, with a traceback. docs/failures.md,
section 3, lists each rule and where it is checked."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from bond.config import ConfigError
from cluster.config import preflight
from cluster.main import parse_config

ROOT = Path(__file__).resolve().parents[2]


def refused(tiny_dir: Path, *sets: str) -> str:
    """The config error preflight.check (what `python -m cluster.main` runs before Ray) gives the smoke job."""
    defaults = (f"models.policy={tiny_dir / 'policy'}", f"reward.path_or_name={tiny_dir / 'reward'}")
    argv = ["--config", str(ROOT / "configs" / "smoke.yaml")]
    job = parse_config(argv + [a for s in defaults + sets for a in ("--set", s)])
    with pytest.raises(ConfigError) as info:
        preflight.check(job, ray_running=True)
    return str(info.value)


def test_the_shipped_configs_pass(tiny_dir):
    for sets in ((), ("learner.lora={r: 4}", "learner.gradient_checkpointing=true", "learner.zero_stage=0")):
        argv = ["--config", str(ROOT / "configs" / "smoke.yaml"), f"--set=models.policy={tiny_dir / 'policy'}"]
        preflight.check(parse_config(argv + [f"--set={s}" for s in sets]), ray_running=True)


@pytest.mark.bad_input("learner.bucket_bytes smaller than the largest parameter", "config error: learner.bucket_bytes")
def test_bucket_smaller_than_a_parameter(tiny_dir):
    err = refused(tiny_dir, "learner.bucket_bytes=1000")
    assert err.startswith("learner.bucket_bytes: 1000 is smaller than parameter model."), err


@pytest.mark.bad_input(
    "learner.gradient_checkpointing on a model that does not support it (JetMoe)",
    "config error: learner.gradient_checkpointing",
)
def test_gradient_checkpointing_the_model_does_not_support(tiny_dir, tmp_path):
    from transformers import JetMoeConfig, JetMoeForCausalLM

    sizes = {"hidden_size": 16, "intermediate_size": 16, "kv_channels": 8, "num_key_value_heads": 2}
    config = JetMoeConfig(vocab_size=58, num_hidden_layers=1, num_local_experts=2, num_experts_per_tok=1, **sizes)
    JetMoeForCausalLM(config).save_pretrained(tmp_path / "jetmoe")
    for f in (tiny_dir / "policy").glob("tokenizer*"):
        shutil.copy2(f, tmp_path / "jetmoe" / f.name)
    err = refused(tiny_dir, f"models.policy={tmp_path / 'jetmoe'}", "learner.gradient_checkpointing=true")
    assert err == "learner.gradient_checkpointing: JetMoeForCausalLM does not support it", err


@pytest.mark.bad_input(
    "learner.lora.target_modules naming no linear layer", "config error: learner.lora.target_modules"
)
def test_lora_targets_that_are_not_linear_layers(tiny_dir):
    err = refused(tiny_dir, "learner.lora={target_modules: [q_proj, attn]}")
    assert err.startswith("learner.lora.target_modules: ['attn'] are not linear layers of LlamaForCausalLM"), err


@pytest.mark.bad_input(
    "models.policy whose checkpoint names its weights differently from its config's model",
    "config error: models.policy",
)
def test_checkpoint_names_that_differ_from_the_model(tiny_dir, tmp_path):
    policy = tmp_path / "policy"
    shutil.copytree(tiny_dir / "policy", policy)
    weights = load_file(policy / "model.safetensors")
    save_file({k.replace("model.", "backbone.", 1): v for k, v in weights.items()}, policy / "model.safetensors")
    err = refused(tiny_dir, f"models.policy={policy}")
    assert err.startswith("models.policy: parameter names differ from the checkpoint"), err


@pytest.mark.bad_input(
    "models.policy with only a .bin checkpoint (vllm backend)", "config error: models.policy (no *.safetensors)"
)
def test_vllm_needs_a_safetensors_policy(tiny_dir, tmp_path):
    policy = tmp_path / "policy"
    shutil.copytree(tiny_dir / "policy", policy)
    torch.save(load_file(policy / "model.safetensors"), policy / "pytorch_model.bin")  # the older format
    (policy / "model.safetensors").unlink()
    err = refused(tiny_dir, f"models.policy={policy}")
    assert err.startswith("models.policy: ") and "no *.safetensors checkpoint" in err, err


@pytest.mark.bad_input(
    "GKD teacher with the policy's tokenizer but a larger (padded) vocabulary", "config error: algorithm.gkd_teacher"
)
def test_teacher_vocabulary_differs(tiny_dir, tmp_path):
    teacher = tmp_path / "teacher"
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32)
    model.resize_token_embeddings(model.config.vocab_size + 6)
    model.save_pretrained(teacher)
    for f in (tiny_dir / "policy").glob("tokenizer*"):
        shutil.copy2(f, teacher / f.name)
    err = refused(tiny_dir, "algorithm.algorithm=gkd", f"algorithm.gkd_teacher={teacher}")
    assert err.startswith(f"algorithm.gkd_teacher: {teacher} predicts 64 tokens, the policy 58"), err


@pytest.mark.bad_input(
    "reward kind learned on a classifier with several labels (an NLI model)", "config error: reward.path_or_name"
)
def test_learned_reward_with_several_labels(tiny_dir):
    err = refused(tiny_dir, f"reward.path_or_name={tiny_dir / 'nli'}")
    assert err.startswith("reward.path_or_name: LearnedRewardModel(") and "has 3" in err, err


@pytest.mark.bad_input(
    "reward kind entailment on a model without an entailment label, or a premise_pattern that is no regex",
    "config error: reward.path_or_name / reward.premise_pattern",
)
def test_entailment_reward_checks(tiny_dir):
    err = refused(tiny_dir, "reward.kind=entailment")
    assert err.startswith("reward.path_or_name: cannot find a unique 'entailment' label"), err
    err = refused(
        tiny_dir, "reward.kind=entailment", f"reward.path_or_name={tiny_dir / 'nli'}", "reward.premise_pattern='('"
    )
    assert err.startswith("reward.premise_pattern: missing ), unterminated subpattern"), err


@pytest.mark.bad_input(
    "function reward whose module exists but has no such function, or names something not callable",
    "config error: reward.path_or_name",
)
def test_function_reward_that_is_not_there(tiny_dir):
    module = "tests.component.tiny_reward_functions"
    err = refused(tiny_dir, "reward.kind=function", f"reward.path_or_name={module}:nope")
    assert err == f"reward.path_or_name: function reward '{module}:nope': module '{module}' has no attribute 'nope'", (
        err
    )
    err = refused(tiny_dir, "reward.kind=function", "reward.path_or_name=json:__name__")
    assert err.endswith("str is not callable"), err


@pytest.mark.bad_input(
    "eval.gold_reward naming a function or model that is not there", "config error: eval.gold_reward.path_or_name"
)
def test_gold_reward_is_checked_as_the_reward_is(tiny_dir):
    err = refused(tiny_dir, "eval.gold_reward={kind: function, path_or_name: 'demo.summary_world:nope'}")
    assert err == (
        "eval.gold_reward.path_or_name: function reward 'demo.summary_world:nope': "
        "module 'demo.summary_world' has no attribute 'nope'"
    ), err
    err = refused(tiny_dir, f"eval.gold_reward={{kind: learned, path_or_name: '{tiny_dir / 'missing'}'}}")
    assert err.startswith("eval.gold_reward.path_or_name: "), err


@pytest.mark.bad_input(
    "prompt an entailment reward's premise_pattern does not match",
    "skipped, counted as `does not match reward.premise_pattern`; none matching: config error: reward.premise_pattern",
)
def test_prompts_the_premise_pattern_does_not_match_are_counted_skips(tiny_dir, tmp_path):
    from cluster.config.prompts import load_prompts

    rows = ["review : the cast was fun . summary :", "tell me a story", "review : the plot was dull . summary :"]
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"prompt": "{r}"}}\n' for r in rows))
    sets = (
        f"models.policy={tiny_dir / 'policy'}",
        "reward.kind=entailment",
        f"reward.path_or_name={tiny_dir / 'nli'}",
        "reward.premise_pattern='review : (?P<premise>.*) summary :'",
        f"prompts.path={tmp_path / 'prompts.jsonl'}",
    )
    job = parse_config(["--config", str(ROOT / "configs" / "smoke.yaml")] + [a for s in sets for a in ("--set", s)])
    fitted = preflight.fit_prompts(job, load_prompts(job.prompts))
    assert [p.text for p in fitted.prompts] == [rows[0], rows[2]]
    assert fitted.skipped == {"does not match reward.premise_pattern": 1}
    with pytest.raises(ConfigError, match=r"^reward.premise_pattern: matches no prompt"):
        preflight.with_premise("nothing like (this)", fitted)

"""The textual-entailment task: the summary world's NLI classifier (built offline, served as an ordinary
from_pretrained sequence classifier) and a short J-BOND run with its reward on the in-process system."""

import random
from pathlib import Path

import pytest
import torch

from bond.records import Role
from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.config.prompts import PromptCursor, load_prompts
from cluster.core import LoopState
from cluster.runtime.in_process import in_process_system
from cluster.training.loop import train
from demo import summary_models
from demo import summary_world as world
from reward_service.entailment import EntailmentReward

ROOT = Path(__file__).resolve().parents[2]
# Builds artifacts/summary on first use (minutes on 2 cores): left out of make test-quick.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary_dir() -> Path:
    return summary_models.build(ROOT / "artifacts" / "summary")


@pytest.mark.timeout(120)
def test_nli_classifier_on_heldout_pairs(summary_dir):
    reward = EntailmentReward(str(summary_dir / "nli"), premise_pattern=world.PREMISE_PATTERN)
    rng = random.Random("test-heldout")  # pairs the classifier never saw (training used the build's own stream)
    triples = [world.nli_example(rng) for _ in range(400)]
    logits = reward._classifier.logits([p for p, _, _ in triples], [h for _, h, _ in triples])
    predicted, labels = logits.argmax(-1), torch.tensor([y for _, _, y in triples])
    accuracy = (predicted == labels).float().mean().item()
    # measured at build time: 0.675 over 1000 pairs (README): contradictions are found, neutral summaries (an
    # absent subject, a same-polarity adjective) are often taken for entailed ones. The prior guess scores 0.5.
    assert accuracy >= 0.6, accuracy
    contradiction = labels == world.LABELS.index("contradiction")
    assert (predicted[contradiction] == labels[contradiction]).float().mean().item() >= 0.9
    # as a reward, through the prompt: a faithful summary scores above a contradicting one of the same source
    rng = random.Random(3)
    src, claims = world.source(rng)
    faithful, flipped = (world.summary(rng, src, claims, kind) for kind in ("faithful", "contradiction"))
    good, bad = reward.score([world.prompt(src)] * 2, [faithful, flipped])
    assert bad < good <= 0.0


@pytest.mark.timeout(300)
def test_jbond_with_the_entailment_reward_runs_end_to_end(summary_dir):
    data = loading.load_document(ROOT / "configs" / "summary.yaml")
    for a in (
        f"models.policy={summary_dir / 'policy'}",
        f"reward.path_or_name={summary_dir / 'nli'}",
        f"prompts.path={summary_dir / 'prompts.jsonl'}",
        "models.sampler_backend=hf",
        "run.steps=2",
        "algorithm.prompts_per_step=8",
    ):
        loading.apply_override(data, a)
    job = loading.build(JobConfig, data)
    records = []
    system = in_process_system(job)
    try:
        train(job, system, load_prompts(job.prompts).prompts, LoopState(0, PromptCursor()), records.append)
    finally:
        system.shutdown()
    assert [r.stats.step for r in records] == [1, 2]
    for r in records:
        assert all(s.reward <= 0.0 and s.reward_model_id.startswith("entailment:") for s in r.samples)
        policy = [s.completion for s in r.samples if s.completion.role is Role.POLICY]
        stats = world.summary_stats([c.prompt_text for c in policy], [c.text for c in policy])
        assert stats.faithful + stats.contradiction + stats.neutral + stats.malformed == pytest.approx(1.0)
        # The pre-trained policy writes summaries of the grammar, at least half of them: its weights depend on the
        # CPU it was trained on, and the one built on the AMD EPYC CI machine writes 4 of these 8 malformed.
        assert stats.malformed <= 0.5

"""The reward models in-process: each kind on the tiny task, their contracts, and RewardSpec validation."""

import math

import pytest
import torch

from bond.config import ConfigError
from reward_service.entailment import EntailmentReward, PremiseExtractor, entailment_index
from reward_service.errors import BadRequestError, NonFiniteRewardError, RewardModelError
from reward_service.function import FunctionReward
from reward_service.learned import LearnedRewardModel, join_text
from reward_service.request import ScoreRequest
from reward_service.reward_model import RewardModel, checked_rewards
from reward_service.spec import RewardKind, RewardSpec, build_reward_model

FUNCTIONS = "tests.component.tiny_reward_functions"


@pytest.fixture(scope="module")
def learned(tiny_dir):
    return LearnedRewardModel(str(tiny_dir / "reward"))


@pytest.fixture(scope="module")
def entailment(tiny_dir):
    return EntailmentReward(str(tiny_dir / "nli"))


def test_every_kind_is_a_reward_model(learned, entailment):
    for model in (learned, entailment, FunctionReward(f"{FUNCTIONS}:positive_and_well_formed")):
        assert isinstance(model, RewardModel)
        rewards = model.score(["the movie", "the plot"], ["was great .", "was dull ."])
        assert len(rewards) == 2 and all(isinstance(r, float) and math.isfinite(r) for r in rewards)
        assert model.score([], []) == []


def test_learned_ranks_positive_above_negative_and_shuffled(learned):
    # The tiny reward model learned "positive and well formed" on whole sentences (prompt + completion).
    good, bad, shuffled = learned.score(["the movie"] * 3, ["was great .", "was awful .", "great . was"])
    assert good > bad > shuffled, (good, bad, shuffled)
    assert good > 0.5 and shuffled < -1.0  # the labels are +1 and -2 (cluster/review_grammar.review_score)


def test_learned_reward_does_not_depend_on_batch_mates(learned):
    # Right padding: a sample's reward is the same alone or in a batch of longer ones (what makes Serve's
    # dynamic batching return the same numbers as in-process scoring).
    prompts = ["the movie", "i thought the film", "the plot", "overall the director"]
    completions = ["was great .", "was really wonderful and the music was fun .", "was", "seemed quite clever ."]
    together = learned.score(prompts, completions)
    alone = [learned.score([p], [c])[0] for p, c in zip(prompts, completions, strict=True)]
    assert together == pytest.approx(alone, abs=1e-5)


def test_learned_input_is_the_joined_text(learned, tiny_dir):
    # The reward of (x, y) is the classifier's logit on the single text join_text(x, y).
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / "reward")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir / "reward").eval()
    with torch.no_grad():
        expected = model(**tok(["the film was fun ."], return_tensors="pt")).logits[0, 0].item()
    assert learned.score(["the film"], ["was fun ."])[0] == pytest.approx(expected, abs=1e-5)
    assert join_text("the film", "was fun .") == "the film was fun ."
    assert join_text("the film ", "was fun .") == "the film was fun ."
    assert join_text("the film", " was fun .") == "the film was fun ."


def test_model_id_names_the_weights(learned, tiny_dir, tmp_path):
    assert learned.model_id.startswith(f"learned:{tiny_dir / 'reward'}@")
    assert LearnedRewardModel(str(tiny_dir / "reward")).model_id == learned.model_id  # deterministic
    # Same path, different weights -> different id.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir / "reward")
    with torch.no_grad():
        model.score.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "reward")
    AutoTokenizer.from_pretrained(tiny_dir / "reward").save_pretrained(tmp_path / "reward")
    other = LearnedRewardModel(str(tmp_path / "reward"))
    assert other.model_id.split("@")[1] != learned.model_id.split("@")[1]


def test_learned_refuses_a_multi_label_classifier(tiny_dir):
    with pytest.raises(ValueError, match="1 output logit.*entailment"):
        LearnedRewardModel(str(tiny_dir / "nli"))


def test_entailment_rewards_are_log_probabilities(entailment, tiny_dir):
    premise = "the movie was great ."
    hyps = [premise, "the movie was awful .", "the plot was dull ."]
    rewards = entailment.score([premise] * 3, hyps)
    assert all(r <= 0.0 for r in rewards)
    # Equal to log softmax of the classifier's logits on the tokenizer pair (premise, hypothesis).
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / "nli")
    tok.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir / "nli").eval()
    with torch.no_grad():
        logits = model(**tok([premise] * 3, hyps, padding=True, return_tensors="pt")).logits
    expected = torch.log_softmax(logits, -1)[:, 0].tolist()  # id2label[0] == "entailment"
    assert rewards == pytest.approx(expected, abs=1e-5)


def test_entailment_ranks_entailed_above_contradiction(entailment):
    premise = "the movie was great ."
    entailed, contradiction, neutral = entailment.score(
        [premise] * 3, [premise, "the movie was awful .", "the music was dull ."]
    )
    assert entailed > contradiction + 1.0 and entailed > neutral + 1.0
    assert entailed > -0.5  # the tiny classifier is confident on pairs of its own grammar


def test_entailment_premise_extraction(entailment):
    extract = PremiseExtractor(r"Document:(?P<premise>.*)Summary:")
    assert extract("Document: the plot was dull . Summary:", 0) == " the plot was dull . "
    assert PremiseExtractor(r"<<(.*)>>")("x <<the film was fun .>> y", 0) == "the film was fun ."
    assert PremiseExtractor()("whole prompt", 0) == "whole prompt"
    with pytest.raises(BadRequestError, match="prompt 3 does not match"):
        extract("no markers here", 3)


def test_entailment_label_lookup():
    assert entailment_index({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}) == 2
    assert entailment_index({"0": "entailment", "1": "not_entailment"}) == 0
    with pytest.raises(ValueError, match="LABEL_0.*LABEL_1"):
        entailment_index({0: "LABEL_0", 1: "LABEL_1"})


def test_function_reward_matches_the_function():
    from tests.component.tiny_reward_functions import positive_and_well_formed

    model = FunctionReward(f"{FUNCTIONS}:positive_and_well_formed")
    prompts, completions = ["the movie", "the film", "the plot"], ["was great .", "was awful .", "was was"]
    expected = [positive_and_well_formed(p, c) for p, c in zip(prompts, completions, strict=True)]
    assert model.score(prompts, completions) == expected
    assert model.model_id.startswith(f"function:{FUNCTIONS}:positive_and_well_formed@")


@pytest.mark.parametrize(
    "bad, match",
    [
        ("nocolon", "package.module:function"),
        ("no_such_module_xyz:f", "cannot import"),
        (f"{FUNCTIONS}:nope", "has no attribute"),
        (f"{FUNCTIONS}:math", "not callable"),
    ],
)
def test_function_reward_bad_import_path(bad, match):
    with pytest.raises(ValueError, match=match):
        FunctionReward(bad)


@pytest.mark.parametrize(
    "completion, error", [("NAN", NonFiniteRewardError), ("INF", NonFiniteRewardError), ("RAISE", RewardModelError)]
)
def test_non_finite_or_failing_rewards_name_the_model_and_sample(completion, error):
    model = FunctionReward(f"{FUNCTIONS}:misbehaving")
    with pytest.raises(error, match=r"misbehaving.*sample 1"):
        model.score(["a", "b", "c"], ["fine", completion, "fine"])


def test_checked_rewards():
    assert checked_rewards([1, 2.5], 2, "m") == [1.0, 2.5]
    with pytest.raises(NonFiniteRewardError, match="'m'.*sample 2"):
        checked_rewards([0.0, 1.0, float("nan")], 3, "m")
    with pytest.raises(RewardModelError, match="2 rewards for 3"):
        checked_rewards([0.0, 1.0], 3, "m")
    with pytest.raises(RewardModelError, match="str"):
        checked_rewards(["1"], 1, "m")


def test_bad_arguments_are_bad_requests(learned):
    with pytest.raises(BadRequestError, match="2 prompts but 1 completions"):
        learned.score(["a", "b"], ["c"])
    with pytest.raises(BadRequestError, match=r"completions\[0\] must be a string"):
        learned.score(["a"], [3])


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "bad_json"),
        (b'["a"]', "wrong_type"),
        (b'{"prompts": ["a"]}', "missing_field"),
        (b'{"prompts": ["a"], "completions": ["b", "c"]}', "length_mismatch"),
        (b'{"prompts": "a", "completions": "b"}', "wrong_type"),
        (b'{"prompts": [1], "completions": ["b"]}', "wrong_type"),
    ],
)
def test_http_body_validation(body, reason):
    with pytest.raises(BadRequestError) as info:
        ScoreRequest.from_json(body)
    assert info.value.reason == reason
    assert ScoreRequest.from_json(b'{"prompts": ["a"], "completions": ["b"]}') == ScoreRequest(("a",), ("b",))


def test_spec_validation_names_the_field():
    spec = RewardSpec("learned", "artifacts/tiny/reward")
    assert spec.kind is RewardKind.LEARNED and spec.http_host == "127.0.0.1" and not spec.autoscaling
    for kwargs, field in [
        ({"kind": "magic"}, "kind"),
        ({"replicas": 0}, "replicas"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"cpus_per_replica": "1"}, "cpus_per_replica"),
        ({"min_replicas": 1}, "min_replicas"),
        ({"min_replicas": 2, "max_replicas": 3}, "replicas"),
        ({"http_port": 0}, "http_port"),
        ({"route_prefix": "reward"}, "route_prefix"),
        ({"request_timeout_s": 0.0}, "request_timeout_s"),
        ({"premise_pattern": "x"}, "premise_pattern"),
        ({"kind": "function", "path_or_name": "no_colon"}, "path_or_name"),
    ]:
        args = {"kind": "learned", "path_or_name": "p"} | kwargs
        with pytest.raises(ConfigError, match=f"^{field}:"):
            RewardSpec(**args)
    assert RewardSpec("learned", "p", min_replicas=1, max_replicas=4, replicas=2).autoscaling


def test_build_reward_model(tiny_dir, learned):
    assert build_reward_model(RewardSpec("learned", str(tiny_dir / "reward"))).model_id == learned.model_id
    assert (
        build_reward_model(RewardSpec("entailment", str(tiny_dir / "nli"), premise_pattern="(.*)")).score(
            ["the film was fun ."], ["the film was fun ."]
        )[0]
        <= 0.0
    )
    assert isinstance(build_reward_model(RewardSpec("function", f"{FUNCTIONS}:misbehaving")), FunctionReward)


def test_reward_models_do_not_import_ray():
    import subprocess
    import sys

    code = (
        "import sys, reward_service.learned, reward_service.entailment, reward_service.function, "
        "reward_service.spec, reward_service.request, reward_service.reply; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

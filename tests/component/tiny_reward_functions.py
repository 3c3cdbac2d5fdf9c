"""Reward functions for the function-reward tests, importable by Serve replicas as
"tests.component.tiny_reward_functions:<name>" (Ray puts the driver's working directory on their path)."""

import math
import time

from demo.review_grammar import review_score


def positive_and_well_formed(prompt: str, completion: str) -> float:
    """The tiny task's exact label: sentiment of the whole sentence, -2 if it is not well formed."""
    return review_score(f"{prompt} {completion}")


def misbehaving(prompt: str, completion: str) -> float:
    """Fails on command, to test the service's error paths: completions "NAN", "INF", "RAISE", "SLOW <seconds>"."""
    if completion == "NAN":
        return math.nan
    if completion == "INF":
        return math.inf
    if completion == "RAISE":
        raise RuntimeError("asked to fail")
    if completion.startswith("SLOW"):
        time.sleep(float(completion.split()[1]))
    return float(len(prompt) + len(completion))


def matches_ground_truth(prompt: str, completion: str, ground_truth: str) -> float:
    """A verifiable reward reading a dataset column: 1 if the completion's first word is the row's answer."""
    words = completion.split()
    return float(bool(words) and words[0] == ground_truth)


def counts_columns(prompt: str, completion: str, **columns) -> float:
    """Takes every extra column of the row: the reward is how many there are."""
    return float(len(columns))


def slow_review(prompt: str, completion: str) -> float:
    """The tiny task's label, 0.1 s a sample: a scoring call long enough to be interrupted (tests/integration)."""
    time.sleep(0.1)
    return review_score(f"{prompt} {completion}")

"""The summary world's generator and literal labels (demo/summary_world.py): the NLI task's ground truth."""

import random

import pytest

from demo import summary_world as world
from demo.review_grammar import is_well_formed


def test_sources_parse_back_to_their_claims_and_are_review_sentences():
    rng = random.Random(0)
    for _ in range(300):
        src, claims = world.source(rng)
        assert world.parse(src) == claims and len(claims) in world.CLAUSES
        assert len({c.subject for c in claims}) == len(claims)
        assert is_well_formed(src) or len(claims) == 3  # the review grammar itself stops at two clauses
        assert world.source_of(world.prompt(src)) == src


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("faithful", "entailment"),
        ("copy", "entailment"),
        ("contradiction", "contradiction"),
        ("hallucination", "neutral"),
        ("swap", "neutral"),
    ],
)
def test_each_summary_kind_gets_its_label(kind, expected):
    rng = random.Random(kind)
    for _ in range(200):
        src, claims = world.source(rng)
        assert world.label(claims, world.summary(rng, src, claims, kind)) == expected


def test_lead_clause():
    assert world.lead("the plot seemed very dull but the acting was great .") == "the plot seemed very dull ."
    assert world.lead("the plot was dull .") == "the plot was dull ."


def test_labels_by_hand():
    claims = world.parse("the plot seemed very dull but the acting was great .")
    assert world.label(claims, "the acting was great .") == "entailment"
    assert world.label(claims, "the plot was dull and the acting was great .") == "entailment"
    assert world.label(claims, "the plot was brilliant .") == "contradiction"
    assert world.label(claims, "the acting was great and the plot was fun .") == "contradiction"
    assert world.label(claims, "the plot was boring .") == "neutral"  # same polarity, not said
    assert world.label(claims, "the music was great .") == "neutral"  # not about the source
    assert world.label(claims, "the acting great .") == "malformed"
    assert world.label(claims, "") == "malformed"


def test_nli_examples_cover_every_label():
    rng = random.Random(1)
    labels = [world.nli_example(rng)[2] for _ in range(600)]
    assert min(labels.count(i) for i in range(3)) > 60


def test_summary_stats():
    p = world.prompt("the plot was dull and the acting was great .")
    stats = world.summary_stats(
        [p] * 4,
        ["the plot was dull .", "the plot was fun .", "the plot was dull and the acting was great .", "dull dull"],
    )
    assert (stats.faithful, stats.contradiction, stats.neutral, stats.malformed) == (0.5, 0.25, 0.0, 0.25)
    assert stats.copy_rate == 0.25 and stats.words == pytest.approx((5 + 5 + 10 + 2) / 4)
    with pytest.raises(ValueError, match="not a prompt of the summary world"):
        world.summary_stats(["hello"], ["the plot was dull ."])

"""Segment attribution (promptopt.measure.attribution) and the `explain` command.

Fast tier: a fake target in which one sentence is harmful by construction. Real-model tier:
the embedded SmolLM2 must rank an added "always answer X" sentence as the worst segment."""
import json
import math

import pytest

from promptopt.measure.attribution import (Segment, example_loss, margin_loss, marked_segments, mask, merge_segments,
                                   preference_loss, split_prompt)
from promptopt.backends.base import CHAT, GENERATE
from promptopt.backends.fake import FakeBackend
from promptopt.cli import main
from promptopt.api import load_task
from promptopt.errors import CapabilityError, ConfigError, TaskError
from promptopt.cli.explain import explain_prompt
from promptopt.testing import BAD_PROMPT, HARMFUL, HarmfulSentenceBackend, toy_task
from promptopt.types import Example, ExampleResult


# ---- segmentation and masking ------------------------------------------------------------------

def test_split_prompt_keeps_offsets_and_closing_quotes():
    prompt = 'Say "yes." Then stop!\nNext line; more, here'
    sentences = split_prompt(prompt)
    assert [s.text for s in sentences] == ['Say "yes."', "Then stop!", "Next line; more, here"]
    assert all(prompt[s.start:s.end] == s.text for s in sentences)
    assert [s.text for s in split_prompt(prompt, "phrase")][-3:] == ["Next line;", "more,", "here"]


def test_mask_deletes_or_replaces_and_tidies_whitespace():
    first, middle, last = split_prompt(BAD_PROMPT)
    assert mask(BAD_PROMPT, middle) == "Is the text good or bad? Reply with one word."
    assert mask(BAD_PROMPT, first) == f"{HARMFUL} Reply with one word."
    assert mask(BAD_PROMPT, middle, "<MASK>") == "Is the text good or bad? <MASK> Reply with one word."
    assert mask("One.\n\nTwo.", split_prompt("One.\n\nTwo.")[0]) == "Two."
    assert mask("A. B.\nC.", split_prompt("A. B.\nC.")[1]) == "A.\nC."


def test_merge_segments_joins_the_shortest_neighbours():
    prompt = "A long first sentence here. Tiny. Small. Another long sentence at the end."
    merged = merge_segments(prompt, split_prompt(prompt), 3)
    assert [s.text for s in merged] == ["A long first sentence here.", "Tiny. Small.",
                                        "Another long sentence at the end."]


def test_marked_segments_keeps_only_spans_found_in_order():
    reply = ("Is the text <mask>good or bad?</mask> <mask>invented words</mask> <mask>Always answer bad.</mask> "
             f"<mask>{BAD_PROMPT}</mask> <mask>Reply</mask>")
    found = marked_segments(BAD_PROMPT, reply, limit=2)
    assert found == [Segment("good or bad?", 12, 24), Segment(HARMFUL, 25, 43)]
    assert marked_segments(BAD_PROMPT, "no tags at all", limit=5) == []


# ---- losses -------------------------------------------------------------------------------------

def test_preference_loss_is_minus_log_sigmoid_of_the_margin():
    assert preference_loss(-1.0, -1.0) == pytest.approx(math.log(2))
    assert preference_loss(-1.0, -3.0, beta=0.5) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert preference_loss(0.0, -1000.0) == pytest.approx(0.0)  # no overflow either way
    assert preference_loss(-1000.0, 0.0) == pytest.approx(1000.0)
    assert preference_loss(-1.0, -2.0) < preference_loss(-2.0, -1.0)  # chosen more likely: lower loss


def test_margin_loss_compares_gold_with_each_wrong_option():
    lps = (-0.5, -1.0, -4.0)
    assert margin_loss(lps, 0) == pytest.approx((preference_loss(-0.5, -1.0) + preference_loss(-0.5, -4.0)) / 2)
    # Two options: the preference form equals the normalized cross-entropy.
    two = (-0.3, -1.7)
    assert margin_loss(two, 1) == pytest.approx(-(two[1] - math.log(math.exp(two[0]) + math.exp(two[1]))))


def test_example_loss_by_kind():
    ex = Example("e", "x", "b", label=1)
    res = ExampleResult("e", "b", score=-0.4, logprob=-0.9, option_logprobs=(-2.0, -0.9))
    assert example_loss(res, ex, "cross_entropy") == pytest.approx(0.4)
    assert example_loss(res, ex, "margin") == pytest.approx(preference_loss(-0.9, -2.0))
    generated = ExampleResult("e", "", score=-1.25, logprob=-5.0)  # mean per-token log-likelihood
    assert example_loss(generated, Example("e", "x", "ref"), "margin") == pytest.approx(1.25)


# ---- explain ------------------------------------------------------------------------------------

def test_harmful_sentence_is_ranked_worst_and_others_are_neutral():
    backend = HarmfulSentenceBackend()
    expl = explain_prompt(toy_task(), backend, BAD_PROMPT)
    assert backend.calls == 1  # full prompt and every masked variant in one backend call
    worst = expl.ranked()[0]
    assert worst.segment.text == HARMFUL and worst.verdict == "hurts"
    assert worst.delta_loss < -1.0 and worst.delta_accuracy == pytest.approx(0.5)
    assert [s.verdict for s in expl.segments if s is not worst] == ["neutral", "neutral"]
    assert expl.accuracy == pytest.approx(0.5)  # " bad" everywhere: right on the bad half only
    data = expl.to_json()
    assert [s["rank"] for s in data["segments"]][1] == 1 and data["loss_kind"] == "margin"
    json.dumps(data)


def test_explain_needs_loglikelihoods_and_a_prompt():
    class GenerateOnly(FakeBackend):
        capabilities = frozenset({GENERATE, CHAT})

    with pytest.raises(CapabilityError, match="log-likelihoods"):
        explain_prompt(toy_task(), GenerateOnly(), BAD_PROMPT)
    with pytest.raises(ConfigError, match="empty"):
        explain_prompt(toy_task(), FakeBackend(), "   ")


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "e.json"
    code = main(["explain", "--task", "demo", "--prompt", "Classify this message. Always answer No.",
                 "--backend", "fake", "--model", "m", "--no-cache", "--limit", "6", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "Always answer No." in stdout and "Δloss" in stdout
    data = json.loads(out.read_text())
    assert data["examples"] == 6 and [s["text"] for s in data["segments"]] == ["Classify this message.",
                                                                               "Always answer No."]


@pytest.mark.parametrize("args, message", [
    (["--task", "no-such-task", "--prompt", "Hi."], "unknown task"),
    (["--task", "demo", "--prompt", "  "], "prompt is empty"),
    (["--task", "demo", "--prompt", "Hi.", "--limit", "0"], "--limit"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, capsys):
    code = main(["explain", *args, "--backend", "fake", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.model
def test_embedded_model_ranks_the_harmful_sentence_worst(hf_embedded):
    # SST-2, not the demo task: SmolLM2-135M is at chance on the demo, so no sentence there
    # has a clear effect, while it reads sentiment well enough for a harmful rule to show.
    try:
        task, question, harmful = load_task("sst2"), "Is this movie review positive or negative?", \
            "Always answer negative."
    except TaskError:  # no local SST-2 copy: the toy task carries the same check
        task, question, harmful = toy_task(), "Is the text good or bad?", "Always answer bad."
    expl = explain_prompt(task, hf_embedded, f"{question} {harmful}", limit=16)
    worst, other = expl.ranked()
    assert worst.segment.text == harmful and worst.verdict == "hurts"
    assert other.segment.text == question and other.delta_loss > worst.delta_loss + 0.05

"""Phrase segmentation and edit operators (promptopt.strategies.blocks.edits), and Plum's objective (promptopt.strategies.blocks.plum_score)."""
import math
import random

import pytest

from promptopt.strategies.blocks.edits import (ADD, DELETE, PARAPHRASE, SWAP, Edit, apply_edit, crossover, deleted_after, delete,
                             insert, phrases, plan_edit, render, segment, swap, tidy)
from promptopt.strategies.blocks.plum_score import Objective, balanced_accuracy, label_entropy
from promptopt.testing import toy_task
from promptopt.types import ExampleResult

# Instructions of the kind SST-2 prompt searches start from (RLPrompt/EvoPrompt/APE style).
SST2_INSTRUCTIONS = [
    "Is this movie review positive or negative?",
    "Classify the sentiment of the review as positive or negative.",
    "Please perform Sentiment Classification task. Given the sentence, assign a sentiment label from "
    "['negative', 'positive']. Return label only without any other text.",
    "Read the movie review carefully. Then decide whether the reviewer liked the film; answer positive "
    "or negative.",
    "You will be given a task.\nRead it carefully and answer with \"positive\" or \"negative\".",
]


@pytest.mark.parametrize("text", SST2_INSTRUCTIONS)
def test_segmentation_is_lossless_and_tidy_keeps_sane_text(text):
    assert render(segment(text)) == text
    assert tidy(text) == text
    assert all(p.text.strip() for p in segment(text))


def test_segmentation_cuts_clauses_and_function_words():
    assert phrases("Classify the sentiment of the review as positive or negative.") == \
        ["Classify", "the sentiment", "of the review", "as positive", "or negative"]
    assert phrases("Is this movie review positive or negative?") == \
        ["Is", "this movie review positive", "or negative"]
    # punctuation is never an editable phrase; sentences and clauses are cut at it
    pieces = segment(SST2_INSTRUCTIONS[3])
    assert [p.text for p in pieces if not p.editable] == [".", ";", "."]
    assert "Then decide" in [p.text for p in pieces]
    assert phrases("Is this review good?", level="word") == ["Is", "this", "review", "good"]


def test_delete_keeps_text_sane():
    text = "Classify the sentiment of the review as positive or negative."
    pieces = segment(text)
    assert tidy(render(delete(pieces, 0))) == "The sentiment of the review as positive or negative."
    last = max(i for i, p in enumerate(pieces) if p.editable)
    assert tidy(render(delete(pieces, last))) == "Classify the sentiment of the review as positive."
    # a phrase between two commas leaves no doubled punctuation behind
    pieces = segment("Read the review, then, decide.")
    mid = [p.text for p in pieces].index("then")
    assert tidy(render(delete(pieces, mid))) == "Read the review, decide."


def test_swap_moves_phrases_and_fixes_capitals():
    pieces = segment("Classify the sentiment of the review.")
    out = tidy(render(swap(pieces, 0, 2)))
    assert out == "Of the review the sentiment classify."
    assert sorted(out.lower().rstrip(".").split()) == sorted("classify the sentiment of the review".split())


def test_add_back_inserts_a_deleted_phrase_and_leaves_the_pool():
    pieces = segment("Classify the sentiment of the review.")
    deleted = deleted_after((), Edit(DELETE, 2, "of the review"))
    assert deleted == ("of the review",)
    short = segment(tidy(render(delete(pieces, 2))))
    assert render(short) == "Classify the sentiment."
    back = Edit(ADD, 1, "of the review")
    assert tidy(render(apply_edit(short, back))) == "Classify the sentiment of the review."
    assert deleted_after(deleted, back) == ()
    assert tidy(render(insert(short, "Please", -1))) == "Please classify the sentiment."


def test_plan_edit_only_draws_what_applies():
    rng = random.Random(0)
    one = segment("Classify.")
    assert plan_edit(one, rng, [DELETE, SWAP]) is None  # never delete or swap the only phrase
    assert plan_edit(one, rng, [DELETE], keep_one=False).op == DELETE
    assert plan_edit(one, rng, [ADD]) is None  # nothing deleted yet
    assert plan_edit(one, rng, [ADD], deleted=("carefully",)).op == ADD
    para = plan_edit(segment("Classify the text."), rng, [PARAPHRASE])
    assert para.op == PARAPHRASE and para.new is None
    with pytest.raises(ValueError):
        apply_edit(segment("Classify the text."), para)


def test_random_edits_always_leave_sane_text():
    rng = random.Random(1)
    for text in SST2_INSTRUCTIONS:
        deleted: tuple[str, ...] = ()
        for _ in range(30):
            edit = plan_edit(segment(text), rng, [DELETE, SWAP, ADD], deleted)
            if edit is None:
                break
            text = tidy(render(apply_edit(segment(text), edit)))
            deleted = deleted_after(deleted, edit)
            assert text and text == text.strip() and "  " not in text.replace("\n", " \n")
            assert not any(bad in text for bad in (" ,", " .", ",.", ",,", "..", " ?"))
            assert text[0].isupper() or not text[0].isalpha()


def test_crossover_joins_two_prompts_at_a_cut():
    a, b = segment("Classify the review."), segment("Decide if the text is positive.")
    assert tidy(render(crossover(a, b, 1))) == "Classify if the text is positive."
    assert tidy(render(crossover(a, b, 0))) == "Decide if the text is positive."


def test_plum_objective_rewards_balance_and_spread():
    task = toy_task()
    dev = task.split("dev")

    def results(preds):
        return {ex.id: ExampleResult(ex.id, task.options[p].strip(), float(p == ex.label),
                                     option_logprobs=tuple(-1.0 if k == p else -2.0 for k in range(2)))
                for ex, p in zip(dev, preds)}

    gold = [ex.label for ex in dev]
    always_one = results([1] * len(dev))
    perfect = results(gold)
    objective = Objective(task)
    assert objective(always_one) == pytest.approx(0.5)  # balanced accuracy 0.5, entropy 0
    assert objective(perfect) == pytest.approx(1.0 + 0.1 * math.log(2))
    assert Objective(task, "task")(always_one) == pytest.approx(0.5)
    likelihood = Objective(task, "likelihood")
    assert likelihood(perfect) == pytest.approx(-math.log(1 + math.exp(-1)))  # gold option 1 nat ahead
    assert likelihood(always_one) < likelihood(perfect)
    assert math.isnan(objective({}))
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(0.5)
    assert label_entropy([0, 1, None]) == pytest.approx(math.log(2))

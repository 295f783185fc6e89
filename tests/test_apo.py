"""APO: the strategy contract, lineage and rejection of bad optimizer output, generation tasks,
config through --set, and one small run with the embedded model."""
import re

import pytest

from promptopt.backends.base import GenResult
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.config import apply_set, build_config, strategy_config
from promptopt.errors import ConfigError
from promptopt.strategies.blocks.selection import SelectionConfig
from promptopt.cli.show import load_run
from promptopt.strategies.apo import APO, APOConfig
from promptopt.testing import StrategyContract, events_of, make_run, toy_task


class TestAPOContract(StrategyContract):
    def make_strategy(self, **options):
        return APO(APOConfig(**options))


GRADIENT = "The prompt never says what makes a text good."


class ScriptedOptimizer(FakeBackend):
    """Replies from one queue per stage (told apart by the request). A reply ending in '…' comes back
    cut off by max_tokens; the reply 'ERROR' comes back as a failed request."""

    def __init__(self, gradients, edits, paraphrases):
        self.queues = {"gradient": list(gradients), "edit": list(edits), "paraphrase": list(paraphrases)}
        self.asked = {"gradient": [], "edit": [], "paraphrase": []}
        super().__init__("scripted", replies=self._reply)

    def _reply(self, req):
        text = req.messages[-1][1]
        stage = "paraphrase" if text.startswith("Rewrite the instruction") else \
            "gradient" if "reason(s) why" in text else "edit"
        self.asked[stage].append(text)
        reply = self.queues[stage].pop(0)
        return reply(text) if callable(reply) else reply

    def generate(self, reqs):
        out = []
        for r in super().generate(reqs):
            if r.text == "ERROR":
                r = GenResult("", "error", r.usage, "scripted failure")
            elif r.text.endswith("…"):
                r = GenResult(r.text[:-1], "length", r.usage)
            out.append(r)
        return out


def current_prompt(request):
    return re.search(r'My current instruction is:\n"(.*)"', request).group(1)


def source_prompt(request):
    return request.rsplit("Instruction: ", 1)[1]


def scripted_run(tmp_path):
    optimizer = ScriptedOptimizer(
        # A cut-off critique keeps its complete sentences; a cut-off prompt is rejected.
        gradients=[f"<START>{GRADIENT}<END>"] * 6 + [f"{GRADIENT} It should also…", ""],
        edits=[
            "<START>Label the text good if it praises something, otherwise bad.<END>",
            'Here is the improved instruction:\n\n"Say good when the text sounds positive, else bad."\n\n'
            "It is clearer because it names the cue.",
            "<START> <END>",
            "<START>Decide whether the text is good or bad by looking at…",
            lambda req: f"<START>{current_prompt(req)}<END>",
            "<START>Write 1 improved instruction(s) that avoid this problem.<END>",
            "ERROR",
        ],
        paraphrases=[
            lambda req: f"<START>In other words: {source_prompt(req)}<END>",
            "To fix the instruction, I'll add more detail about the text.",
            lambda req: f"In other words: {source_prompt(req)}",
            lambda req: f"<START>Put simply: {source_prompt(req)}<END>",
        ])
    config = APOConfig(rounds=1, paraphrases=1)
    run = make_run(APO(config), optimizer=optimizer, run_dir=tmp_path, budget=Budget(max_examples=2000))
    run.run()
    run.log.close()
    return run, optimizer, events_of(tmp_path)


def test_lineage_meta_and_rejections_are_logged(tmp_path):
    run, optimizer, events = scripted_run(tmp_path)
    calls = [e for e in events if e["type"] == "optimizer_call"]
    assert [(c["purpose"], len(c["requests"])) for c in calls] == \
        [("apo.gradient", 8), ("apo.edit", 7), ("apo.paraphrase", 4)]  # 2 seeds x 4 gradients, 1 empty

    cands = {e["candidate_id"]: e for e in events if e["type"] == "candidate"}
    seeds = {i for i, c in cands.items() if c["origin"] == "seed"}
    edits = [c for c in cands.values() if c["origin"] == "apo.edit"]
    assert sorted(c["text"] for c in edits) == ["Label the text good if it praises something, otherwise bad.",
                                                "Say good when the text sounds positive, else bad."]
    for c in edits:
        assert c["parents"][0] in seeds and c["meta"]["gradient"] == GRADIENT and c["meta"]["errors"]
        assert load_run(tmp_path).lineage(c["candidate_id"])[-1]["origin"] == "seed"
    paras = [c for c in cands.values() if c["origin"] == "apo.paraphrase"]
    assert len(paras) == 3  # the commentary reply was rejected
    for c in paras:
        assert c["parents"][0] in seeds and c["meta"]["paraphrase_of"] in cands
        # A paraphrase of an edit carries the edit's gradient, so `show` can say why it exists.
        assert ("gradient" in c["meta"]) == (cands[c["meta"]["paraphrase_of"]]["origin"] == "apo.edit")

    notes = [e for e in events if e["type"] == "note" and e["kind"] == "proposal.rejected"]
    reasons = {n["reason"].split(":")[0]: n for n in notes}
    assert set(reasons) == {"empty reply", "empty <START>...<END> tags", "truncated", "copy of the parent prompt",
                            "echo of the request", "optimizer call failed",
                            "commentary about the instruction, not an instruction"}
    assert reasons["empty reply"]["stage"] == "apo.gradient"
    assert reasons["commentary about the instruction, not an instruction"]["stage"] == "apo.paraphrase"
    assert all(n["parent"] in cands for n in notes)
    assert not any("<START>" in c["text"] or "looking at" in c["text"] or "Write 1" in c["text"]
                   for c in cands.values())


# Replies SmolLM2-135M-Instruct gave to these meta-prompts: it ignores the tags and chats.
RECORDED = [
    ("apo.gradient", "length",
     "The instruction could have led to these mistakes in several ways:\n\n1. **Misinterpretation**: The "
     "instruction calls a review \"positive\" when it is actually \"negative\". This is subjective.\n\n2. **Imprec",
     '1. **Misinterpretation**: The instruction calls a review "positive" when it is actually "negative". '
     "This is subjective.", None),
    ("apo.edit", "stop",
     "Here's a revised instruction with a focus on grammar and clarity:\n\n\"Is this movie review positive or "
     "negative?\"\n\nThis instruction aims to provide a clear and concise answer.",
     "Is this movie review positive or negative?", "copy of the parent prompt"),
    ("apo.edit", "stop",
     "To fix the original instruction, I'll add a special syntax that will tell you the label.",
     None, "commentary about the instruction, not an instruction"),
    ("apo.edit", "stop",
     "Original instruction:\n\"Is this movie review positive or negative?\"\n\nModified instruction:\n"
     "\"Is this movie review mostly positive or mostly negative?\"",
     "Is this movie review mostly positive or mostly negative?", None),
    ("apo.edit", "length",
     "I'd recommend rephrasing the instruction to:\n\n\"Does the reviewer like the movie?\"\n\nThe original "
     "instruction was:\n\"Is this movie review positive or negative?\"\n\nThe suggested response would be:\n"
     "\"Yes. The movie review is positive.\"\n\nThis change makes the instruction more",
     "Does the reviewer like the movie?", None),
    ("apo.paraphrase", "stop", "This movie review is positive, with no negative sentiment.",
     "This movie review is positive, with no negative sentiment.", None),
]


@pytest.mark.parametrize("stage, finish, reply, expected, problem", RECORDED)
def test_recorded_small_model_replies(stage, finish, reply, expected, problem):
    from promptopt.strategies.apo import _check_gradient, _check_prompt, _reply_items
    items, whole_problem = _reply_items(GenResult(reply, finish), stage, "Is this movie review positive or negative?")
    assert whole_problem is None and len(items) == 1
    check = _check_gradient if stage == "apo.gradient" else _check_prompt
    text, item_problem = check(items[0], "Is this movie review positive or negative?")
    assert item_problem == problem
    if expected is not None:
        assert text == expected


def test_the_optimizer_sees_errors_with_gold_and_predicted_labels(tmp_path):
    run, optimizer, events = scripted_run(tmp_path)
    ask = optimizer.asked["gradient"][0]
    shown = re.findall(r"Input: (.*)\nCorrect label: (\w+)\nModel's label: (\w+)", ask)
    assert len(shown) == 4  # errors_per_gradient
    for text, gold, predicted in shown:
        assert gold != predicted and text.endswith(gold)  # the toy input names its label
    assert "labels each input as one of: bad, good" in ask


def test_generation_task_shows_wrong_answers_with_the_model_output():
    asked = []

    def reply(req):
        asked.append(req.messages[-1][1])
        return f"<START>Answer with one word, good or bad (take {len(asked)}).<END>"

    target = FakeBackend("target", replies=lambda req: "Let me think. The answer is 7")
    run = make_run(APO(APOConfig(rounds=1, n_gradients=1, paraphrases=0)), task=toy_task(output="generate"),
                   target=target, optimizer=FakeBackend("opt", replies=reply), budget=Budget(max_examples=500))
    report = run.run()
    gradient_asks = [a for a in asked if "reason(s) why" in a]
    assert gradient_asks and re.search(r"Expected answer: (good|bad)\n", gradient_asks[0])
    assert "Model's output: Let me think. The answer is 7" in gradient_asks[0]
    assert "Model's final answer: Let me think. The answer is 7" in gradient_asks[0]  # identity extractor
    assert any(c.origin == "apo.edit" for c in run.history.candidates())
    assert report.stop_reason == "strategy finished"


def test_children_per_parent_are_capped_and_the_rest_noted(tmp_path):
    run = make_run(APO(APOConfig(rounds=1, max_expansion=2)), run_dir=tmp_path, budget=Budget(max_examples=2000))
    run.run()
    run.log.close()
    events = events_of(tmp_path)
    children = [e for e in events if e["type"] == "candidate" and e["origin"].startswith("apo.")]
    per_parent = {}
    for c in children:
        per_parent[c["parents"][0]] = per_parent.get(c["parents"][0], 0) + 1
    assert per_parent and max(per_parent.values()) <= 2
    assert any(e["type"] == "note" and e.get("reason") == "over max_expansion" for e in events)


def test_a_small_budget_scores_fewer_children_properly(tmp_path):
    # 2 seeds on 12 dev + 12 train examples = 48; 12 left is one child on a full pull of 12.
    run = make_run(APO(APOConfig(rounds=3)), run_dir=tmp_path, budget=Budget(max_examples=60))
    run.run()
    run.log.close()
    children = [c for c in run.history.candidates() if c.origin.startswith("apo.")]
    assert len(children) == 1 and run.history.n_scored(children[0].id) == 12
    assert any(e.get("reason") == "no budget left to score it" for e in events_of(tmp_path))


def test_selection_on_train_scores_the_final_beam_on_dev():
    config = APOConfig(rounds=1, beam_width=2, selection=SelectionConfig(split="train", samples_per_eval=6))
    run = make_run(APO(config), budget=Budget(max_examples=3000))
    run.run()
    beam = run.strategy.beam
    assert len(beam) == 2 and all(run.history.n_scored(c.id, "dev") == 12 for c in beam)
    children = [c for c in run.history.candidates() if c.origin.startswith("apo.")]
    assert children and all(run.history.n_scored(c.id, "train") >= 6 for c in children)


def test_settings_from_the_command_line():
    fake = {"target": {"backend": "fake"}, "optimizer": {"backend": "fake"}}  # no torch import
    data = {"strategy": "apo", **fake}
    for assignment in ("apo.beam_width=2", "apo.selection.method=sr", "apo.selection.samples_per_eval=16",
                       "apo.paraphrases=0"):
        apply_set(data, assignment)
    cfg = build_config(data)
    config = strategy_config(APO, cfg.strategy_options)
    assert (config.beam_width, config.paraphrases, config.rounds) == (2, 0, 6)
    assert (config.selection.method, config.selection.samples_per_eval, config.selection.budget) == ("sr", 16, 2048)
    for bad in ("apo.beam_width=0", "apo.selection.method=thompson", "apo.selection.nope=1", "apo.beams=2",
                "apo.temperature=hot"):
        data = {"strategy": "apo", **fake}
        apply_set(data, bad)
        with pytest.raises(ConfigError):
            build_config(data)


@pytest.mark.model
def test_apo_with_the_embedded_model(hf_embedded, tmp_path):
    from promptopt.api import load_task
    from promptopt.loop import Run
    from promptopt.resolved import ResolvedRun
    from promptopt.runlog import RunLog

    config = APOConfig(rounds=1, beam_width=1, minibatch_size=8, n_gradients=1, edits_per_gradient=1,
                       paraphrases=0, max_tokens=48, selection=SelectionConfig(samples_per_eval=8, budget=16))
    # A small final report too: the best candidate and the seed on dev, 8 test examples.
    resolved = ResolvedRun(task=load_task("demo"), strategy=APO(config), budget=Budget(max_examples=100),
                           final_top_k=1, test_limit=8)
    run = Run(resolved, target=hf_embedded, optimizer=hf_embedded, log=RunLog(tmp_path))
    report = run.run()
    run.log.close()
    events = events_of(tmp_path)
    calls = [e for e in events if e["type"] == "optimizer_call"]
    assert calls and calls[0]["purpose"] == "apo.gradient" and calls[0]["responses"][0]["text"]
    cands = [e for e in events if e["type"] == "candidate"]
    assert all(c["origin"] == "seed" or (c["origin"].startswith("apo.") and c["parents"]) for c in cands)
    # Each optimizer reply either became a candidate or was logged as rejected: nothing vanishes.
    replies = sum(len(c["responses"]) for c in calls if c["purpose"] != "apo.gradient")  # critiques are not prompts
    children = [c for c in cands if c["origin"] != "seed"]
    rejected = [e for e in events if e["type"] == "note" and e["kind"] == "proposal.rejected"]
    assert len(children) + len(rejected) >= replies
    assert report.stop_reason == "strategy finished" and report.best_test is not None

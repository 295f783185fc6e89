"""Editable meta-prompts of the older strategies (APO, EvoPrompt GA/DE, PMPO, paraphrase, the Plum
searches): the defaults are the texts the strategies always sent, a file replaces one, and a bad file is
one error line (exit 2) before any model loads."""
import hashlib

import pytest

from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.cli import main
from promptopt.strategies.apo import APO, APOConfig, EDIT, GRADIENT, PARAPHRASE
from promptopt.strategies.blocks.evoprompt import DE_REQUEST, GA_REQUEST, PARAPHRASE_REQUEST
from promptopt.strategies.blocks.phrase_search import PARAPHRASE_REQUEST as PHRASE_REQUEST
from promptopt.strategies.evoprompt_de import DEConfig, EvoPromptDE
from promptopt.strategies.evoprompt_ga import EvoPromptGA, GAConfig
from promptopt.strategies.harmony import Harmony, HarmonyConfig
from promptopt.strategies.paraphrase import INSTRUCTION, Paraphrase, ParaphraseConfig
from promptopt.strategies.pmpo import PMPO, PMPOConfig, REWRITE_INSTRUCTION, SEGMENT_INSTRUCTION
from promptopt.testing import make_run

# sha256[:12] of each default text as it was before it became a template: a run must reproduce.
DEFAULTS = {
    (APOConfig, "gradient"): (GRADIENT, "4f1a4cabea65"), (APOConfig, "edit"): (EDIT, "80311f14d2c8"),
    (APOConfig, "paraphrase"): (PARAPHRASE, "e66f712518f5"),
    (GAConfig, "paraphrase"): (PARAPHRASE_REQUEST, "d7e9f5ecd579"), (GAConfig, "crossover"): (GA_REQUEST, "36b95ee47852"),
    (DEConfig, "de"): (DE_REQUEST, "2b651516263d"),
    (PMPOConfig, "segment"): (SEGMENT_INSTRUCTION, "10c02fb02e19"), (PMPOConfig, "rewrite"): (REWRITE_INSTRUCTION, "df386ebbd16c"),
    (ParaphraseConfig, "rewrite"): (INSTRUCTION, "4ef62beaeda8"), (HarmonyConfig, "paraphrase"): (PHRASE_REQUEST, "49f11313b314"),
}


@pytest.mark.parametrize("key", list(DEFAULTS), ids=lambda k: f"{k[0].__name__}.{k[1]}" if isinstance(k, tuple) else "")
def test_default_texts_are_unchanged(key):
    config, short = key
    text, digest = DEFAULTS[key]
    assert config().templates()[short] == text
    assert hashlib.sha256(text.encode()).hexdigest()[:12] == digest


class Recorder(FakeBackend):
    def __init__(self):
        super().__init__("opt")
        self.sent: list[str] = []

    def generate(self, reqs):
        self.sent += ["\n".join(c for _, c in r.messages) for r in reqs]
        return super().generate(reqs)


MARK = "(EDITED BY THE USER)"


@pytest.mark.parametrize("make,config,short", [
    (APO, APOConfig, "gradient"),
    (EvoPromptGA, GAConfig, "paraphrase"),
    (EvoPromptDE, DEConfig, "paraphrase"),
    (PMPO, PMPOConfig, "segment"),
    (Paraphrase, ParaphraseConfig, "rewrite"),
    (Harmony, HarmonyConfig, "paraphrase"),
])
def test_a_file_replaces_a_template(tmp_path, make, config, short):
    path = tmp_path / f"{short}.txt"
    path.write_text(config().templates()[short] + "\n" + MARK, encoding="utf-8")
    sent = {}
    for name, options in (("default", {}), ("edited", {"prompt_files": {short: str(path)}})):
        opt = Recorder()
        make_run(make(config(**options)), optimizer=opt, budget=Budget(max_examples=200)).run()
        sent[name] = opt.sent
    assert sent["default"] and not any(MARK in s for s in sent["default"])
    assert any(MARK in s for s in sent["edited"])


@pytest.mark.parametrize("strategy,short,text,needle", [
    ("apo", "edit", "Fix {prompt}", "missing placeholder(s) {errors}, {gradient}, {job}, {k}"),
    ("evoprompt_ga", "crossover", "{a} {b} {c}", "unknown placeholder(s) {c}"),
    ("evoprompt_ga", "de", "{a}", "unknown template name 'de'"),
    ("pmpo", "rewrite", "{prompt", "malformed braces"),
    ("harmony", "paraphrase", "Say {phrase} again, {{literally}}", None),
])
def test_bad_template_file_is_one_line_exit_2(tmp_path, capsys, strategy, short, text, needle):
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    code = main(["templates", "--strategy", strategy, "--set", f"{strategy}.prompt_files.{short}={path}"])
    out, err = capsys.readouterr()
    if needle is None:
        assert code == 0 and text in out and f"({path};" in out
    else:
        assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_templates_lists_every_strategy_with_editable_prompts(capsys):
    assert main(["templates"]) == 0
    out = capsys.readouterr().out
    for name in ("apo", "evoprompt_ga", "evoprompt_de", "pmpo", "paraphrase", "harmony", "plum_ga", "hill_climb",
                 "opro", "gepa"):
        assert f"### {name}  " in out
    for template in ("apo.gradient", "apo.edit", "apo.paraphrase", "evoprompt.crossover", "evoprompt.de",
                     "evoprompt.paraphrase", "pmpo.rewrite", "pmpo.segment", "paraphrase.rewrite", "plum.paraphrase"):
        assert f"== {template}  (default; " in out

"""Hostile and bad input, fuzzed with hypothesis: every input gets a clear error or correct handling,
never a traceback of another kind, and the template engine never evaluates anything."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptopt.cli.commands import main, parse_budget
from promptopt.config import apply_set, build_config
from promptopt.errors import ConfigError, PromptOptError
from promptopt.task.template import render, template_fields

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(prompt=texts, inp=texts)
def test_template_inserts_text_verbatim(prompt, inp):
    out = render("{prompt}\nQ: {input}\nA:", {"prompt": prompt, "input": inp})
    assert out == f"{prompt}\nQ: {inp}\nA:"  # braces, format specs and markers inside values stay literal


@FUZZ
@given(template=texts)
def test_template_never_evaluates(template):
    values = {"prompt": "P", "input": "I"}
    try:
        out = render(template, values)
    except PromptOptError:
        return  # an unknown field is a clear error
    assert "__class__" not in out or "__class__" in template
    assert set(template_fields(template)) <= set(values)


def test_attribute_and_index_access_is_not_a_field():
    assert render("{prompt.__class__} {input[0]} {prompt!r}", {"prompt": "P", "input": "I"}) == \
        "{prompt.__class__} {input[0]} {prompt!r}"


@FUZZ
@given(key=st.text(max_size=30), value=texts)
def test_set_assignments_validate_or_fail_clearly(key, value):
    data = {"strategy": "paraphrase", "target": {"backend": "fake", "model": "m"}, "optimizer": None}
    try:
        apply_set(data, f"{key}={value}")
        build_config(data)
    except ConfigError:
        pass


@FUZZ
@given(spec=texts)
def test_budget_strings(spec):
    try:
        out = parse_budget(spec)
    except ConfigError:
        return
    assert out and all(v > 0 for v in out.values())


@FUZZ
@given(argv=st.lists(st.sampled_from(["optimize", "evaluate", "show", "list", "--task", "--strategy", "--budget",
                                      "--set", "--seed", "demo", "nope", "-1", "0", "x=y", "paraphrase.rounds=0",
                                      "strategies", "--split", "test", "--prompt", "{input}", "\x00", "é"]),
                     max_size=6))
def test_cli_arguments_never_traceback(argv, tmp_path_factory, capsys):
    # Keep any run that does start tiny and on the fake backend, in a scratch dir.
    tmp = tmp_path_factory.mktemp("cli")
    fixed = ["--backend", "fake", "--model", "m", "--run-dir", str(tmp), "--no-cache", "-q"] \
        if argv[:1] == ["optimize"] else []
    if argv[:1] == ["evaluate"]:
        fixed = ["--backend", "fake", "--model", "m", "--no-cache"]
    code = main([*argv, *fixed] if argv[:1] in (["optimize"], ["evaluate"]) else argv)
    _, err = capsys.readouterr()
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("promptopt: error:") and "Traceback" not in err


@FUZZ
@given(rows=st.lists(st.one_of(
    st.fixed_dictionaries({"text": texts, "label": st.sampled_from(["a", "b", "c", "", "{prompt}"])}),
    st.text(max_size=80), st.binary(max_size=40)), min_size=0, max_size=30))
def test_custom_task_files(rows, tmp_path_factory):
    from promptopt.api import load_task
    tmp = tmp_path_factory.mktemp("task")
    with open(tmp / "data.jsonl", "wb") as f:
        for r in rows:
            line = json.dumps(r).encode() if isinstance(r, dict) else (r if isinstance(r, bytes) else r.encode())
            f.write(line.replace(b"\n", b" ") + b"\n")
    (tmp / "spec.toml").write_text(
        'template = "{prompt}\\nText: {input}\\nLabel:"\noutput = "choose"\noptions = [" a", " b"]\n'
        'seed_prompts = ["Label it."]\nmetric = "accuracy"\n[columns]\ninput = "text"\ntarget = "label"\n'
        '[data]\nfile = "data.jsonl"\nsplit = { train = 0.4, dev = 0.3, test = 0.3 }\n')
    try:
        task = load_task(str(tmp / "spec.toml"))
    except PromptOptError:
        return
    for ex in task.split("dev"):
        assert task.render("P {input}", ex).startswith("P {input}\nText: ")

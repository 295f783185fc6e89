"""BIG-Bench Hard: 27 reasoning tasks, registered as `bbh_<task>` (e.g. `bbh_navigate`).

Local files only: `bbh/<task>.json`, `{"canary": ..., "examples": [{"input": ..., "target": ...}]}`
(docs/data.md; 250 examples each, except causal_judgement 187, penguins_in_a_table 146 and
snarks 178). The CoT exemplars in `bbh/cot-prompts/` are not used.

Splits: the files hold one split, so all three are carved from it. Test is carved first with a
FIXED seed ("test"), so every run of a task reports on the same examples whatever its seed; dev is
then carved from the rest with the run seed, and train is what remains. Defaults: test 100, dev 50,
train the rest (100) for the 250-example tasks; for the three small ones (under 200 examples)
test 40% and dev 20% of the file: causal_judgement 75/37/75, snarks 71/36/71, penguins_in_a_table
58/29/59 (test/dev/train). `test_size` and `dev_size` override them; `test_limit` then takes the
fixed `data.test_sample` of the carved test split.

Output: 23 tasks have a small closed answer set and are `choose` tasks, scored by log-likelihood:
- multiple choice ("Options:\\n(A) ...\\n(B) ..." in the input, target "(B)"): `Task` holds one option
  list for the whole task, so the options are the union of the letters that task's examples list
  (e.g. " (A)" .. " (F)" for date_understanding, " (A)" .. " (R)" for
  reasoning_about_colored_objects); an example with fewer options can still be "answered" with a
  letter it does not list. A target that is not one of its own example's letters is dropped (its
  letters do not count towards the union) and counted in `meta["dropped"]`; in the shared copy that
  is one movie_recommendation and two ruin_names examples whose answer text held a comma and was
  never mapped to a letter.
- fixed words: True/False (boolean_expressions), Yes/No (causal_judgement, navigate, web_of_lies),
  yes/no (sports_understanding, lower case as in its targets), valid/invalid (formal_fallacies).
Four are open-ended `generate` tasks, with the answer cut at the first blank line: object_counting
and multistep_arithmetic_two take the last number of the output; dyck_languages and word_sorting
take its first non-empty line and compare it with the target after normalizing (word_sorting: case,
commas and spacing; dyck_languages: all whitespace removed).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import PositiveInt

from promptopt.task.data import (TaskOptions, carve, local_file, no_local_copy, parse_options, read_text,
                            resolve_data_dir, test_sample)
from promptopt.errors import TaskError
from promptopt.registry import register_task
from promptopt.task import Task, last_number
from promptopt.types import Example

TEMPLATE = "{prompt}\n\n{input}\nAnswer:"
TEST_SEED = "test"  # the test carve's seed: fixed, never the run seed
SMALL = 200  # files with fewer examples get proportional split sizes


def first_line(text: str) -> str:
    """The first non-empty line of a model's output, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _words(text: str) -> str:
    return " ".join(text.lower().replace(",", " ").split()).rstrip(".").strip()


def _no_space(text: str) -> str:
    return "".join(text.split()).rstrip(".")


def words_match(prediction: str, example: Example) -> float:
    """Exact match up to case, commas, spacing and a final period (word_sorting)."""
    return float(_words(prediction) == _words(example.target))


def symbols_match(prediction: str, example: Example) -> float:
    """Exact match ignoring all whitespace (dyck_languages: "]]>" equals "] ] >")."""
    return float(_no_space(prediction) == _no_space(example.target))


def number_match(prediction: str, example: Example) -> float:
    return float(prediction != "" and prediction == last_number(example.target))


@dataclass(frozen=True)
class BbhSpec:
    kind: str  # "letters" (multiple choice), "words" (fixed options) or "generate"
    seed_prompt: str
    words: tuple[str, ...] = ()  # the options of a "words" task, index = label
    extract: Callable[[str], str] = first_line
    metric: Callable[[str, Example], float] = words_match


YES_NO = (" No", " Yes")


def _mc(prompt: str) -> BbhSpec:
    return BbhSpec("letters", prompt)


SPECS: dict[str, BbhSpec] = {
    "boolean_expressions": BbhSpec("words", "Work out the value of the Boolean expression. Answer True or False.",
                                   (" False", " True")),
    "causal_judgement": BbhSpec("words", "Read the story and decide how a typical person would answer the "
                                "question about causation. Answer Yes or No.", YES_NO),
    "date_understanding": _mc("Work out the date the question asks for and pick the matching option letter."),
    "disambiguation_qa": _mc("Decide what the ambiguous pronoun in the sentence refers to, or whether it is "
                             "ambiguous, and pick the option letter."),
    "dyck_languages": BbhSpec("generate", "Write the closing brackets that complete the sequence so that every "
                              "bracket is closed in the right order. Give only the closing brackets, separated "
                              "by spaces.", metric=symbols_match),
    "formal_fallacies": BbhSpec("words", "Decide whether the argument's conclusion follows logically from its "
                                "stated premises. Answer valid or invalid.", (" valid", " invalid")),
    "geometric_shapes": _mc("Work out which shape the SVG path draws and pick the option letter."),
    "hyperbaton": _mc("Pick the option letter of the sentence whose adjectives are in the natural English order."),
    "logical_deduction_five_objects": _mc("Use the clues to work out the order of the objects, then pick the "
                                          "option letter of the true statement."),
    "logical_deduction_seven_objects": _mc("Use the clues to work out the order of the objects, then pick the "
                                           "option letter of the true statement."),
    "logical_deduction_three_objects": _mc("Use the clues to work out the order of the objects, then pick the "
                                           "option letter of the true statement."),
    "movie_recommendation": _mc("Pick the option letter of the movie most like the movies listed."),
    "multistep_arithmetic_two": BbhSpec("generate", "Calculate the value of the arithmetic expression. Give "
                                        "the result as a single integer.", extract=last_number,
                                        metric=number_match),
    "navigate": BbhSpec("words", "Follow the moves one by one and say whether you end where you started. "
                        "Answer Yes or No.", YES_NO),
    "object_counting": BbhSpec("generate", "Count the items of the kind the question asks about. Give the count "
                               "as a number.", extract=last_number, metric=number_match),
    "penguins_in_a_table": _mc("Read the table of penguins and answer the question by picking the option letter."),
    "reasoning_about_colored_objects": _mc("Answer the question about the objects and their colors by picking "
                                           "the option letter."),
    "ruin_names": _mc("Pick the option letter of the humorous edit of the artist or movie name."),
    "salient_translation_error_detection": _mc("Compare the German source with its English translation and pick "
                                               "the option letter of the kind of error the translation makes."),
    "snarks": _mc("Pick the option letter of the sentence that is sarcastic."),
    "sports_understanding": BbhSpec("words", "Is the sentence about sports plausible? Answer yes or no.",
                                    (" no", " yes")),
    "temporal_sequences": _mc("Use the timeline to find when the person could have gone to the place, and pick "
                              "the option letter."),
    "tracking_shuffled_objects_five_objects": _mc("Follow each swap in turn and pick the option letter of what the "
                                                  "person has at the end."),
    "tracking_shuffled_objects_seven_objects": _mc("Follow each swap in turn and pick the option letter of what the "
                                                   "person has at the end."),
    "tracking_shuffled_objects_three_objects": _mc("Follow each swap in turn and pick the option letter of what the "
                                                   "person has at the end."),
    "web_of_lies": BbhSpec("words", "Follow who says who tells the truth and decide whether the last person tells "
                           "the truth. Answer Yes or No.", YES_NO),
    "word_sorting": BbhSpec("generate", "Sort the words alphabetically. Give the sorted words on one line, "
                            "separated by spaces."),
}
NAMES = tuple(f"bbh_{t}" for t in SPECS)

_LETTER_TARGET = re.compile(r"\(([A-Z])\)")


def listed_options(text: str) -> list[tuple[str, str]]:
    """The options an input lists after its last "Options:" line, as (key, text): ("A", "12/25/1937")
    for "(A) 12/25/1937", ("-", "Yes") for "- Yes"; [] when the input lists none."""
    _, sep, tail = text.rpartition("Options:")
    if not sep:
        return []
    found = []
    for line in tail.splitlines():
        line = line.strip()
        m = re.match(r"^\(([A-Z])\)\s*(.*)$", line)
        if m:
            found.append((m.group(1), m.group(2).strip()))
        elif line.startswith("- "):
            found.append(("-", line[2:].strip()))
    return found


class BbhOptions(TaskOptions):
    test_size: PositiveInt | None = None  # default 100 (40% of a file under 200 examples); fixed seed
    dev_size: PositiveInt | None = None  # default 50 (20% of a file under 200 examples); run seed
    test_limit: PositiveInt | None = None  # a fixed sample of the carved test split
    max_tokens: PositiveInt = 64  # generate tasks only


def build(bbh_task: str, data_dir: str | Path | None, seed: int, options: dict[str, Any]) -> Task:
    name = f"bbh_{bbh_task}"
    spec = SPECS[bbh_task]
    opts = parse_options(BbhOptions, options, name)
    root = resolve_data_dir(data_dir)
    path = local_file(root, f"bbh/{bbh_task}.json")
    if path is None:
        raise no_local_copy(name, root, f"bbh/{bbh_task}.json", " (this task has no hub fallback)")
    rows = _rows(path)
    options_tuple = _options(spec, rows)
    examples, dropped = [], 0
    for i, row in enumerate(rows):
        ex = _example(name, spec, options_tuple, i, row, path)
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
    n = len(examples)
    test_size = opts.test_size or (100 if n >= SMALL else round(0.4 * n))
    dev_size = opts.dev_size or (50 if n >= SMALL else round(0.2 * n))
    # Test first, with a fixed seed: every run of this task reports on the same examples.
    rest, test = carve(examples, test_size, TEST_SEED, f"task {name}, option test_size")
    train, dev = carve(rest, dev_size, seed, f"task {name}, option dev_size")
    splits = {"train": train, "dev": dev, "test": test_sample(test, opts.test_limit)}
    generate = spec.kind == "generate"
    return Task(
        name=name,
        splits=splits,
        template=TEMPLATE,
        output="generate" if generate else "choose",
        options=() if generate else options_tuple,
        seed_prompts=(spec.seed_prompt,),
        extract=spec.extract,
        metric=spec.metric,
        max_tokens=opts.max_tokens,
        # A model that finishes early sometimes invents the next question; stop there.
        stop=("\n\n",) if generate else (),
        description=f"BIG-Bench Hard {bbh_task} ({'generate' if generate else 'choose'})",
        meta={"source": "local", "bbh_task": bbh_task, "examples": n, "dropped": dropped,
              "test_size": test_size, "dev_size": dev_size, "test_limit": opts.test_limit,
              "sizes": {k: len(v) for k, v in splits.items()}},
    )


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); is this a BBH task file?") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise TaskError(f"{path}: expected a JSON object with a non-empty \"examples\" list "
                        f"(the BBH layout in docs/data.md)")
    for i, row in enumerate(examples):
        if not (isinstance(row, dict) and isinstance(row.get("input"), str) and isinstance(row.get("target"), str)):
            raise TaskError(f"{path}: example {i + 1} is not an object with text \"input\" and \"target\"")
    return examples


def _options(spec: BbhSpec, rows: list[dict[str, str]]) -> tuple[str, ...]:
    if spec.kind == "words":
        return spec.words
    if spec.kind == "generate":
        return ()
    letters = {key for row in rows if _letter(row) for key, _ in listed_options(row["input"]) if key != "-"}
    return tuple(f" ({c})" for c in sorted(letters))


def _letter(row: dict[str, str]) -> str | None:
    """A multiple-choice row's answer letter, or None when its target is not a letter it lists."""
    m = _LETTER_TARGET.fullmatch(row["target"].strip())
    return m.group(1) if m and m.group(1) in {key for key, _ in listed_options(row["input"])} else None


def _example(name: str, spec: BbhSpec, options: tuple[str, ...], i: int, row: dict[str, str],
             path: Path) -> Example | None:
    """One example (id = the row's place in the file, whatever split it lands in); None for a
    multiple-choice target that is not a letter its own example lists."""
    target = row["target"].strip()
    ex_id = f"{name}-{i}"
    if spec.kind == "generate":
        return Example(id=ex_id, input=row["input"], target=target)
    if spec.kind == "letters":
        if _letter(row) is None:
            return None
        return Example(id=ex_id, input=row["input"], target=target, label=options.index(f" {target}"))
    words = [w.strip() for w in options]
    if target not in words:
        raise TaskError(f"{path}: example {i + 1} has target {target!r}, expected one of "
                        f"{', '.join(words)}; is this the {name[4:]} file?")
    return Example(id=ex_id, input=row["input"], target=target, label=words.index(target))


def _factory(bbh_task: str) -> Callable[..., Task]:
    def factory(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
        return build(bbh_task, data_dir, seed, options)

    factory.__name__ = factory.__qualname__ = f"bbh_{bbh_task}"
    factory.__doc__ = f"BIG-Bench Hard {bbh_task}: {SPECS[bbh_task].seed_prompt}"
    return register_task(f"bbh_{bbh_task}")(factory)


for _t in SPECS:  # module attributes bbh_<task>, named by the entry points in pyproject.toml
    globals()[f"bbh_{_t}"] = _factory(_t)
del _t

"""LIAR as ProTeGi uses it: is a political statement a lie? Yes/No, scored by log-likelihood.

Local files only: `protegi/liar/{train,test}.jsonl` (fields `label`, `text`). ProTeGi's binary
version is not on the hub in this form. Label 1 is PolitiFact "false", a lie, answer "Yes";
label 0 is "true", answer "No" (shared/data/README.md explains why the generator's comment misleads).

Dev is carved from train with the run seed. Its default size is 200 rather than 100: on 100
examples the standard error of an accuracy near 60% is ~5 points, as large as the gains one hopes
to measure; 200 brings it to ~3.5 and still leaves ~3,500 train rows. Strategies that race
candidates score only as many dev examples as they need.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pydantic import PositiveInt

from promptopt.task.data import (TaskOptions, carve, local_file, no_local_copy, parse_options, read_jsonl,
                            require_columns, resolve_data_dir, test_sample)
from promptopt.errors import TaskError
from promptopt.registry import register_task
from promptopt.task import Task
from promptopt.types import Example

OPTIONS = (" No", " Yes")  # index = label: 1 = a lie = "Yes"
SEED_PROMPT = ("Read the statement together with who said it, their job, state and party, and where "
               "it was said. Is the statement a lie? Answer Yes or No.")


class LiarOptions(TaskOptions):
    dev_size: PositiveInt = 200
    test_limit: PositiveInt | None = None  # a fixed, class-balanced sample of the 461 test rows


@register_task("liar")
def liar(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    opts = parse_options(LiarOptions, options, "liar")
    root = resolve_data_dir(data_dir)
    train, dev = carve(_examples("train", root), opts.dev_size, seed, "task liar, option dev_size")
    # The test sample ignores the run seed: every run reports on the same statements.
    test = test_sample(_examples("test", root), opts.test_limit)
    splits = {"train": train, "dev": dev, "test": test}
    return Task(
        name="liar",
        splits=splits,
        # `text` already reads "Statement: ...\nJob title: ...\nState: ...\nParty: ...\nContext: ...".
        template="{prompt}\n\n{input}\nAnswer:",
        output="choose",
        options=OPTIONS,
        seed_prompts=(SEED_PROMPT,),
        description="LIAR (ProTeGi binary version): is the statement a lie?",
        meta={"source": "local", "dev_from_train": opts.dev_size, "test_limit": opts.test_limit,
              "sizes": {k: len(v) for k, v in splits.items()}},
    )


def _examples(split: str, root: Path | None) -> list[Example]:
    path = local_file(root, f"protegi/liar/{split}.jsonl")
    if path is None:
        raise no_local_copy("liar", root, "protegi/liar/{train,test}.jsonl", " (this task has no hub fallback)")
    rows = read_jsonl(path)
    require_columns(rows, ("label", "text"), str(path))
    return [_example(split, i, row, path) for i, row in enumerate(rows)]


def _example(split: str, i: int, row: Mapping[str, Any], path: Path) -> Example:
    label = row["label"]
    if label not in (0, 1):
        raise TaskError(f"{path}: row {i + 1} has label {label!r}, expected 0 (true) or 1 (a lie)")
    # Carved dev examples keep their train id: an id names the source row, whatever the seed.
    return Example(id=f"liar-{split}-{i}", input=row["text"], target=OPTIONS[label].strip(), label=label)

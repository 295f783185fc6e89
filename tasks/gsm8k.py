"""GSM8K grade-school math word problems: the model writes a solution, the last number is the answer.

Local files: `gsm8k/{train,test}.jsonl` (fields `question`, `answer`; the answer's last line is
`#### N`); hub fallback `openai/gsm8k` config "main". GSM8K has no dev split, so one is carved
from train with the run seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pydantic import PositiveInt

from promptopt.task.data import (TaskOptions, carve, load_hub, local_file, parse_options, read_jsonl,
                            require_columns, resolve_data_dir, sample, test_sample)
from promptopt.errors import TaskError
from promptopt.registry import register_task
from promptopt.task import Task, exact_match, last_number
from promptopt.types import Example

SEED_PROMPT = "Solve the math word problem step by step, then give the final answer as a number."


class Gsm8kOptions(TaskOptions):
    dev_size: PositiveInt = 200
    train_size: PositiveInt | None = None  # cap on what is left of train after the dev carve
    test_limit: PositiveInt | None = None  # a fixed sample of the 1319 test problems
    max_tokens: PositiveInt = 256


def final_answer(solution: str) -> str:
    """The number after `####` in a GSM8K solution, normalized like the extractor's output ("" if none)."""
    _, sep, tail = solution.rpartition("####")
    return last_number(tail) if sep else ""


@register_task("gsm8k")
def gsm8k(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    opts = parse_options(Gsm8kOptions, options, "gsm8k")
    root = resolve_data_dir(data_dir)
    train_rows, source = _rows("train", root)
    test_rows, _ = _rows("test", root)
    train = [_example("train", i, row) for i, row in enumerate(train_rows)]
    train, dev = carve(train, opts.dev_size, seed, "task gsm8k, option dev_size")
    splits = {
        "train": sample(train, opts.train_size, seed),
        "dev": dev,
        # The test sample ignores the run seed: every run reports on the same problems.
        "test": test_sample([_example("test", i, row) for i, row in enumerate(test_rows)], opts.test_limit),
    }
    return Task(
        name="gsm8k",
        splits=splits,
        # A chat (user) message; the prompt comes first so its KV cache is shared across problems.
        template="{prompt}\n\nQuestion: {input}",
        output="generate",
        seed_prompts=(SEED_PROMPT,),
        extract=last_number,
        metric=exact_match,
        max_tokens=opts.max_tokens,
        # A model that finishes early sometimes invents the next problem; stop there.
        stop=("\n\nQuestion:",),
        chat=True,
        description="GSM8K grade-school math word problems, exact match on the final number",
        meta={"source": source, "dev_from_train": opts.dev_size, "train_size": opts.train_size,
              "test_limit": opts.test_limit, "sizes": {k: len(v) for k, v in splits.items()}},
    )


def _rows(split: str, root: Path | None) -> tuple[list[dict[str, Any]], str]:
    path = local_file(root, f"gsm8k/{split}.jsonl")
    if path:
        rows, source = read_jsonl(path), "local"
    else:
        rows = load_hub("openai/gsm8k", split, config="main", task="gsm8k", looked_in=root,
                        layout="gsm8k/{train,test}.jsonl")
        source = "hub"
    require_columns(rows, ("question", "answer"), str(path or f"openai/gsm8k {split}"))
    return rows, source


def _example(split: str, i: int, row: Mapping[str, Any]) -> Example:
    # Carved dev examples keep their train id: an id names the source row, whatever the seed.
    target = final_answer(row["answer"])
    if not target:
        raise TaskError(f"gsm8k: {split} row {i + 1} has no '#### <number>' line in its answer; "
                        f"is this GSM8K data?")
    # The worked solution is what a demo shows and what a loss is computed on.
    return Example(id=f"gsm8k-{split}-{i}", input=row["question"], target=target,
                   fields={"reference": row["answer"]})

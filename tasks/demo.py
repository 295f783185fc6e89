"""A small offline task shipped inside the package: is a customer message a complaint?

78 short messages written for promptopt (tasks/data/demo.jsonl), with fixed splits of 24 train,
24 dev and 30 test, half complaints in each. Some messages carry bad news that is nobody's fault
at the company ("my dog chewed the cable, where can I buy one?"), and some complaints are polite,
so "is it negative?" is not the same question as "is it a complaint?".

The options are content words (" other"/" complaint"), not " No"/" Yes": after a message that is
itself a question, a small model answers that question, and Yes/No scores fell below chance.
The seed prompt asks the wrong question on purpose. Measured with the embedded SmolLM2-135M on all
78 messages: the seed scores 56%, "Classify this customer message." 78% (AUC 0.93), so a
prompt optimizer has real room to win.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from promptopt.task.data import TaskOptions, parse_options, read_jsonl
from promptopt.registry import register_task
from promptopt.task import Task
from promptopt.types import Example

OPTIONS = (" other", " complaint")  # index = label
DATA_FILE = Path(__file__).with_name("data") / "demo.jsonl"  # package data, see pyproject


class DemoOptions(TaskOptions):
    """The demo has no options; this model only rejects unknown ones."""


@register_task("demo")
def demo(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """The data ship with the package, so `data_dir` and `seed` change nothing."""
    parse_options(DemoOptions, options, "demo")
    rows = read_jsonl(DATA_FILE)
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for row in rows:
        split = splits[row["split"]]
        label = int(row["complaint"])
        split.append(Example(id=f"demo-{row['split']}-{len(split)}", input=row["text"],
                             target=OPTIONS[label].strip(), label=label))
    return Task(
        name="demo",
        splits=splits,
        template="{prompt}\n\nMessage: {input}\nAnswer:",
        output="choose",
        options=OPTIONS,
        seed_prompts=("Does the customer sound upset?",),
        description="Is a customer message a complaint? (78 hand-written messages, offline)",
        meta={"source": "package", "sizes": {k: len(v) for k, v in splits.items()}},
    )

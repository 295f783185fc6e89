"""Your own examples and metric in Python: a DataFrame, a metric function, optimize, evaluate held-out rows.

    python examples/harness_dataframe.py        # the embedded model on CPU; the data ships in the package
"""
import importlib.resources

import pandas as pd

import promptopt
from promptopt.callbacks import NoImprovement

df = pd.read_json(importlib.resources.files("promptopt.tasks") / "data/demo.jsonl", lines=True)  # text, complaint, split


def metric(prediction: str, row: dict) -> float:  # the chosen option against the row's own label
    return float(prediction.strip() == ("yes" if row["complaint"] else "no"))


task = promptopt.make_task(train=df[df.split == "train"], dev=df[df.split == "dev"], test=df[df.split == "test"],
                           template="{prompt}\n\nMessage: {text}\nAnswer:", input_key="text", label_key="complaint",
                           output="choose", options=[" no", " yes"], metric=metric,
                           prompt="Is this customer complaining?", name="complaints")
first = promptopt.optimize(task=task, strategy="fewshot", optimizer_model=None, budget={"max_examples": 120},
                           callbacks=[NoImprovement(1)])  # stops early, with its report
report = promptopt.optimize(task=task, resume=first.run_dir)  # the same task object: the search goes on
print("first session ended by", first.stop_reason, "after", first.steps, "steps; the resumed one by",
      report.stop_reason, "after", report.steps)
print("best:", repr(report.best_prompt), "+ demos", report.best_demos, "| dev", report.best_dev)
for name, prefix in (("seed", "Is this customer complaining?"), ("best", report.best_prefix)):
    print(name, "on the held-out rows:", promptopt.evaluate(prefix, task, split="test").score)

"""RLPrompt's 16-shot classification benchmarks: SST-2, MR, CR, SST-5, AG News and TREC.

Local files: `rlprompt_fsc/16-shot/<dataset>/<k-seed>/{train,dev}.tsv` plus one shared
`<dataset>/test.tsv` (docs/data.md). RLPrompt's dataset_seed 0..4 is k_seed
16-100, 16-13, 16-21, 16-42, 16-87. The splits are those fixed files, so the run seed does not
change them.

Options: RLPrompt's verbalizers (" terrible"/" great") were chosen for a prompt-free masked-LM
template. Our template puts an instruction first that asks a question, so the default options are
the very words that question names (" negative"/" positive"): an instruction-tuned model puts its
probability there. Pass `verbalizers=[" terrible", " great"]` to reproduce RLPrompt's setup.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import PositiveInt

from promptopt.task.data import (TaskOptions, load_hub, local_file, no_local_copy, parse_options, read_table,
                            resolve_data_dir, sample, test_sample)
from promptopt.errors import ConfigError, TaskError
from promptopt.registry import register_task
from promptopt.task import Task
from promptopt.types import Example

ROOT = "rlprompt_fsc/16-shot"
SHOTS = 16  # per class, in train and in dev


@dataclass(frozen=True)
class FewShotDataset:
    folder: str  # under rlprompt_fsc/16-shot/
    title: str
    field: str  # what the template calls one input
    options: tuple[str, ...]  # index = label
    seed_prompt: str
    hub: str | None = None  # a hub dataset with `text`/`label` columns in the same label order


DATASETS = {
    "sst2": FewShotDataset("sst-2", "SST-2 movie review sentiment", "Review", (" negative", " positive"),
                           "Is this movie review positive or negative?", hub="SetFit/sst2"),
    "mr": FewShotDataset("mr", "MR movie review sentiment", "Review", (" negative", " positive"),
                         "Is this movie review positive or negative?"),
    "cr": FewShotDataset("cr", "CR product review sentiment", "Review", (" negative", " positive"),
                         "Is this product review positive or negative?"),
    "sst5": FewShotDataset("sst-5", "SST-5 fine-grained movie review sentiment", "Review",
                           (" terrible", " bad", " okay", " good", " great"),
                           "Rate this movie review as terrible, bad, okay, good or great."),
    "agnews": FewShotDataset("agnews", "AG News topic", "Article",
                             (" World", " Sports", " Business", " Technology"),
                             "What is this news article about: World, Sports, Business or Technology?"),
    # TREC label 2 is ABBR; RLPrompt's verbalizer "Expression" was picked for an MLM, an instruction
    # model understands "abbreviation".
    "trec": FewShotDataset("trec", "TREC question type", "Question",
                           (" description", " entity", " abbreviation", " human", " location", " number"),
                           "What kind of answer does this question ask for: description, entity, "
                           "abbreviation, human, location or number?"),
}


class FewShotOptions(TaskOptions):
    k_seed: Literal["16-100", "16-13", "16-21", "16-42", "16-87"] = "16-100"
    test_limit: PositiveInt | None = None  # a fixed, class-balanced sample of the test split
    verbalizers: tuple[str, ...] | None = None  # one option text per label, replacing the defaults


def build(name: str, data_dir: str | Path | None, options: Mapping[str, Any]) -> Task:
    ds = DATASETS[name]
    opts = parse_options(FewShotOptions, options, name)
    verbalizers = opts.verbalizers or ds.options
    if len(verbalizers) != len(ds.options):
        raise ConfigError(f"task {name}: verbalizers needs {len(ds.options)} texts (one per label), "
                          f"got {len(verbalizers)}")
    root = resolve_data_dir(data_dir)
    rows, source = _load_rows(name, ds, root, opts.k_seed)
    splits = {split: [_example(name, split, i, row, verbalizers, source) for i, row in enumerate(split_rows)]
              for split, split_rows in rows.items()}
    # The test sample ignores the run seed: every run of a task reports on the same examples.
    splits["test"] = test_sample(splits["test"], opts.test_limit)
    return Task(
        name=name,
        splits=splits,
        template=f"{{prompt}}\n\n{ds.field}: {{input}}\nAnswer:",
        output="choose",
        options=verbalizers,
        seed_prompts=(ds.seed_prompt,),
        description=f"{ds.title} (RLPrompt 16-shot, k-seed {opts.k_seed})",
        meta={"source": source, "k_seed": opts.k_seed, "test_limit": opts.test_limit,
              "sizes": {k: len(v) for k, v in splits.items()}},
    )


def _load_rows(name: str, ds: FewShotDataset, root: Path | None,
               k_seed: str) -> tuple[dict[str, list[dict[str, Any]]], str]:
    paths = {"train": local_file(root, f"{ROOT}/{ds.folder}/{k_seed}/train.tsv"),
             "dev": local_file(root, f"{ROOT}/{ds.folder}/{k_seed}/dev.tsv"),
             "test": local_file(root, f"{ROOT}/{ds.folder}/test.tsv")}
    if all(paths.values()):
        return {split: read_table(path) for split, path in paths.items() if path}, "local"
    layout = f"{ROOT}/{ds.folder}/{k_seed}/{{train,dev}}.tsv and {ROOT}/{ds.folder}/test.tsv"
    if ds.hub is None:
        raise no_local_copy(name, root, layout, " (this task has no hub fallback)")
    return _hub_rows(name, ds.hub, len(ds.options), root, layout, k_seed), "hub"


def _hub_rows(name: str, hub: str, n_classes: int, root: Path | None, layout: str,
              k_seed: str) -> dict[str, list[dict[str, Any]]]:
    """RLPrompt's exact 16-shot draws are not on the hub: draw 16 per class for train and dev,
    seeded by k_seed, from the hub's train split (so the numbers differ from the paper's)."""
    pool = load_hub(hub, "train", task=name, looked_in=root, layout=layout)
    test = load_hub(hub, "test", task=name, looked_in=root, layout=layout)
    n = SHOTS * n_classes
    train = sample(pool, n, f"{k_seed}-train", balance_by=itemgetter("label"))
    in_train = {id(row) for row in train}
    dev = sample([r for r in pool if id(r) not in in_train], n, f"{k_seed}-dev", balance_by=itemgetter("label"))
    return {"train": train, "dev": dev, "test": test}


def _example(name: str, split: str, i: int, row: Mapping[str, Any], options: tuple[str, ...],
             source: str) -> Example:
    # RLPrompt's rule: the text column is `text` when present, otherwise `sentence`.
    text = row.get("text", row.get("sentence"))
    try:
        label = int(row["label"])
    except (KeyError, TypeError, ValueError):
        raise TaskError(f"task {name}: {split} row {i + 1} ({source}) has no integer `label`") from None
    if text is None:
        raise TaskError(f"task {name}: {split} row {i + 1} ({source}) has neither `text` nor `sentence`")
    if not 0 <= label < len(options):
        raise TaskError(f"task {name}: {split} row {i + 1} ({source}) has label {label}, "
                        f"expected 0..{len(options) - 1}")
    return Example(id=f"{name}-{split}-{i}", input=str(text), target=options[label].strip(), label=label)


@register_task("sst2")
def sst2(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """SST-2 binary sentiment; the only one here with a hub fallback (SetFit/sst2)."""
    return build("sst2", data_dir, options)


@register_task("mr")
def mr(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """MR (Pang & Lee) binary movie review sentiment."""
    return build("mr", data_dir, options)


@register_task("cr")
def cr(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """CR (Hu & Liu) binary product review sentiment."""
    return build("cr", data_dir, options)


@register_task("sst5")
def sst5(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """SST-5 five-way sentiment, 0 = very negative .. 4 = very positive."""
    return build("sst5", data_dir, options)


@register_task("agnews")
def agnews(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """AG News four-way topic: World, Sports, Business, Sci/Tech."""
    return build("agnews", data_dir, options)


@register_task("trec")
def trec(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """TREC six-way question type."""
    return build("trec", data_dir, options)

"""`promptopt lmeval import TASK` and `promptopt lmeval export RUN --out DIR` (promptopt/integrations/lmeval.py)."""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("lmeval", help="bridge to lm-evaluation-harness: import a task config, export a best prompt")
    lsub = p.add_subparsers(dest="lmeval_command", required=True, parser_class=type(p))
    i = lsub.add_parser("import", help="check an lm-eval task (YAML path or name) and print its --task spec")
    i.add_argument("task", help="an lm-eval task YAML file (or a registered lm-eval task name)")
    e = lsub.add_parser("export", help="write a finished run's best prompt as an lm-eval task config")
    e.add_argument("run", help="a finished run made with --task lmeval:PATH")
    e.add_argument("--out", required=True, help="folder for <task>_promptopt.yaml (use it as lm_eval --include_path)")
    e.add_argument("--task-name", help="name of the exported task (default: <task>_promptopt)")


def run(args: argparse.Namespace) -> int:
    from promptopt.integrations.lmeval import describe_import, export_run
    if args.lmeval_command == "import":
        print(describe_import(args.task))
        return 0
    path = export_run(args.run, args.out, task_name=args.task_name)
    name = path.stem
    print(f"lm-eval task config: {path}")
    print(f"run it: lm_eval --model hf --model_args pretrained=MODEL --include_path {path.parent} --tasks {name}")
    return 0

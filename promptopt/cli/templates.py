"""`promptopt templates`: the optimizer-LLM prompts a strategy will use, after any overrides."""
from __future__ import annotations

import argparse

from promptopt import registry
from promptopt.config import apply_set, strategy_config
from promptopt.errors import ConfigError


def templates(args: argparse.Namespace) -> int:
    """Print each template of the named strategies (all that have any by default): its name,
    placeholders, where its text comes from (default or file), and the text itself."""
    names = [args.strategy] if args.strategy else registry.names("strategies")
    if args.set and not args.strategy:
        raise ConfigError("templates: --set needs --strategy")
    shown = 0
    for name in names:
        cls = registry.get("strategies", name)
        declared = getattr(cls.Config, "TEMPLATES", ())  # strategies with editable meta-prompts
        if not declared:
            if args.strategy:
                raise ConfigError(f"strategy {name} has no editable templates")
            continue
        data: dict = {"strategy": name}
        for assignment in args.set or ():
            apply_set(data, assignment)
        config = strategy_config(cls, data.get("strategy_options", {}))
        texts = config.templates()
        if not args.strategy:  # several strategies share a template (plum.paraphrase): say whose these are
            print(f"### {name}  (--set {name}.prompt_files.<short name>=FILE)\n")
        for t in declared:
            source = config.prompt_files.get(t.short, "default")
            fields = ", ".join("{" + f + "}" for f in sorted(t.fields)) or "none"
            print(f"== {t.name}  ({source}; placeholders: {fields})" + (f"\n# {t.about}" if t.about else ""))
            print(texts[t.short].rstrip() + "\n")
            shown += 1
    if not shown:
        print("no strategy has editable templates")
    return 0

"""The server benches' requests: SST-2 test reviews x both labels after the seed instruction and k train demos."""
from __future__ import annotations

import random

from promptopt.api import load_task
from promptopt.backends.base import LLRequest
from promptopt.task.data import test_sample
from promptopt.task.demos import sample_demo_ids


def sst2_requests(n: int, k: int) -> tuple[list[LLRequest], str]:
    """2n requests (the fixed test sample's first n reviews, each label) and the shared prefix."""
    task = load_task("sst2")
    by_id = {ex.id: ex for ex in task.split("train")}
    ids = sample_demo_ids(task.split("train"), k, random.Random("bench-onetoken"))
    prefix = task.prompt_text(task.seed_prompts[0], [by_id[i] for i in ids])
    out = [LLRequest(task.render(prefix, ex), opt) for ex in test_sample(list(task.split("test")), n)
           for opt in task.options]
    return out, prefix

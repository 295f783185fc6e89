"""Scoring throughput: one fixed k-demo set vs k demos retrieved per input (hf backend, embedded model, no cache).

    PROMPTOPT_DATA_DIR=../shared/data python bench/knn_speed.py --task agnews --n 48 --k 4 --shared 0,3

`--shared 0,3` adds one retrieval setting per number N: N shared demos (the fixed set's first N, the same
for every input) and k - N retrieved after them, so every setting's prompts hold k demos. `--split test`
takes the inputs from the test split (the `--test-limit` sample a run's final report scores, all in one
call, as there); the default is dev, in its file order.

Both go through the loop's scoring (`Run.score`), as in a run: a fixed set is one shared prefix for all
inputs; retrieval groups inputs that retrieved the same demos and sends every group in one backend call,
whose prefix sharing keeps the instruction (and each input's context across its options) computed once.
Settings alternate (fixed, retrieved, fixed, retrieved) so a change in machine load hits both; the CPU
seconds of this process (all its threads) are shown too, as they move less than wall time on a shared machine.
"positions / example" counts the token positions the model ran (padding included, read by a forward hook),
which does not move with the load. "distinct prefixes / example" is the fewest positions any exact scorer
could run for the same requests: the nodes of the token trie of the model inputs (a causal model can reuse
KV only where inputs start the same way; a demo's KV after another demo is not its KV after the instruction).
"""
from __future__ import annotations

import argparse
import random
import sys
import time

from knn_bound import distinct_prefixes  # bench/, beside this file
from promptopt.api import load_task
from promptopt.backends.hf import HFBackend
from promptopt.budget import Budget
from promptopt.task.data import test_sample
from promptopt.task.demos import sample_demo_ids
from promptopt.loop import Run
from promptopt.resolved import ResolvedRun
from promptopt.task.retrieval import RetrievalPolicy
from promptopt.strategies.fewshot import FewShot, FewShotConfig
from promptopt.strategy import ScoreRequest
from promptopt.types import Candidate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="agnews")
    p.add_argument("--n", type=int, default=48, help="dev examples scored per setting and repeat")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--embedding", default="bm25")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--shared", default="0", help="comma-separated: shared demos of each retrieval setting (< k)")
    p.add_argument("--split", choices=("dev", "test"), default="dev",
                   help="where the inputs come from: test scores them as a run's final report does, all in one call")
    args = p.parse_args(argv)
    shares = [int(x) for x in args.shared.split(",")]
    if any(not 0 <= n < args.k for n in shares):
        p.error(f"--shared: each number must be within 0..{args.k - 1}")
    task = load_task(args.task)
    backend = HFBackend()
    run = Run(ResolvedRun(task=task, strategy=FewShot(FewShotConfig()), budget=Budget()), target=backend,
              optimizer=None)
    queries = list(task.split("dev"))
    seed = task.seed_prompts[0]
    fixed = Candidate(seed, demos=sample_demo_ids(task.split("train"), args.k, random.Random("throughput")))
    settings = [("fixed", fixed)] + [
        (f"retrieved, {n} shared" if n else "retrieved",
         Candidate(seed, retrieval=RetrievalPolicy(k=args.k - n, embedding=args.embedding, shared=fixed.demos[:n])))
        for n in shares]
    split = args.split
    if split == "test":  # a Run knows test ids only in its final report, which sets them like this
        run._test_by_id = {ex.id: ex for ex in task.split("test")}
    run.score([ScoreRequest(fixed, "dev", example_ids=tuple(ex.id for ex in queries[:4]))])  # first-call overheads
    run.retriever.index(args.embedding)  # built once per run, outside the timed part
    positions = [0]

    def count(module: object, args: tuple, kwargs: dict) -> None:  # every forward of the scorer passes input_ids
        ids = kwargs.get("input_ids", args[0] if args else None)
        positions[0] += int(ids.numel()) if ids is not None else 0

    backend.model.register_forward_pre_hook(count, with_kwargs=True)
    sent: list = []
    score = backend.loglikelihood

    def capture(reqs: list) -> list:  # the requests of one setting, for the trie bound
        sent.extend(reqs)
        return score(reqs)

    backend.loglikelihood = capture  # type: ignore[method-assign]
    print("| setting | k | examples | seconds | examples/s | CPU s / example | positions / example | distinct prefixes / "
          "example | distinct demo sets | accuracy |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rates: dict[str, list[float]] = {name: [] for name, _ in settings}
    cpu: dict[str, list[float]] = {name: [] for name, _ in settings}
    pool = [ex for ex in task.split(split)]
    if len(pool) < args.n * args.repeats:
        p.error(f"--n {args.n} x --repeats {args.repeats} is more than the {len(pool)} {split} examples of {args.task}")
    if split == "test":  # the examples a run's --test-limit would score, dealt to the repeats in turn
        pool = test_sample(pool, args.n * args.repeats)
    for rep in range(args.repeats):
        ids = tuple(ex.id for ex in (pool[rep::args.repeats] if split == "test" else
                                     pool[rep * args.n:(rep + 1) * args.n]))
        for name, cand in settings:
            started, cpu0, positions[0] = time.perf_counter(), time.process_time(), 0
            sent.clear()
            ev, = run.score([ScoreRequest(cand, split, example_ids=ids)])
            secs, cpu_secs = time.perf_counter() - started, time.process_time() - cpu0
            sets = len({tuple(d) for d in run.retriever.retrieve(cand.retrieval, [run._example(split, i) for i in ids])}) \
                if cand.retrieval else 1
            rates[name].append(len(ids) / secs)
            cpu[name].append(cpu_secs / len(ids))
            print(f"| {name} | {args.k} | {len(ids)} | {secs:.1f} | {len(ids) / secs:.2f} | {cpu_secs / len(ids):.2f} | "
                  f"{positions[0] / len(ids):.0f} | {trie_nodes(backend, sent) / len(ids):.0f} | {sets} | "
                  f"{ev.score:.3f} |", flush=True)
    mean = {name: (sum(rates[name]) / len(rates[name]), sum(cpu[name]) / len(cpu[name])) for name, _ in settings}
    for name, _ in settings[1:]:
        print(f"{name} / fixed examples/s: {mean[name][0] / mean['fixed'][0]:.2f} (wall), "
              f"{mean['fixed'][1] / mean[name][1]:.2f} (CPU time)")
    return 0


def trie_nodes(backend: HFBackend, reqs: list) -> int:
    """Distinct token prefixes of the model inputs (each request's tokens but its last)."""
    return distinct_prefixes([tuple(tokens[:-1]) for tokens, _ in backend.token_pairs(reqs)])


if __name__ == "__main__":
    sys.exit(main())

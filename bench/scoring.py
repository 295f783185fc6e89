"""Scoring throughput: one ~150-token candidate prompt first, SST-2 reviews, label log-likelihoods.

Side by side in one process, on the same model weights and the same (context, continuation)
pairs: promptopt's hf backend (its default, which packs suffixes on CPU, and its padded batches,
run alternately so both see the same load), lm-evaluation-harness's HFLM.loglikelihood (skipped
with a message when lm_eval is not importable), and a naive loop with one full forward per request. Prints a
table and writes JSON (runs/bench/scoring-<time>.json, or --out). Then the response cache: the same
requests through promptopt's SQLite cache twice (a fresh file); the second pass must make no model call.

    PROMPTOPT_DATA_DIR=../shared/data python bench/scoring.py [--n 200] [--threads 2] [--repeats 2]

The roofline counts 2 x parameters FLOPs per token (`2 x params x tokens`) over the fewest tokens
any method must run: the distinct token prefixes of all inputs (the prompt once, then each review).
Ours is also given by CPU time (process time against the matmul peak per CPU second), which with
--threads 1 other processes on the machine distort less than the wall clock.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from promptopt.backends.base import LLRequest
from promptopt.backends.hf import PACKED_TOKENS, HFBackend
from promptopt.scoring.cache import CachedBackend, ResponseCache

SST2_TEST = Path("rlprompt_fsc") / "16-shot" / "sst-2" / "test.tsv"
LABELS = (" negative", " positive")  # SST-2 label 0, 1
TEMPLATE = "{prompt}\nReview: {sentence}\nSentiment:"
# A deliberately long instruction (~150 tokens), as prompt optimizers produce.
PROMPT = (
    "You are an expert film critic and a careful annotator of sentiment. You will read one short "
    "excerpt from a movie review. Decide whether the reviewer's overall opinion of the film is "
    "positive or negative. Focus on the words that carry judgement, such as adjectives and verbs "
    "that praise or condemn, and weigh them against each other. Be alert to sarcasm, irony and "
    "faint praise: a sentence that sounds polite can still be a criticism. Ignore plot summary "
    "that expresses no opinion, and do not let the topic of the film, however dark or cheerful, "
    "sway your decision. If the excerpt mixes praise and criticism, judge which one the reviewer "
    "means to leave you with. Answer with exactly one word: positive or negative."
)


@dataclass
class Measured:
    method: str
    seconds: float
    examples_per_s: float
    tokens_per_s: float
    ratio_to_lm_eval: float | None
    roofline_fraction: float
    accuracy: float
    agreement_with_ours: float
    note: str = ""


def load_sst2(n: int) -> list[tuple[str, int]]:
    root = os.environ.get("PROMPTOPT_DATA_DIR")
    path = Path(root) / SST2_TEST if root else None
    if path is None or not path.is_file():
        sys.exit(f"scoring bench: SST-2 not found at {path or '$PROMPTOPT_DATA_DIR/' + str(SST2_TEST)}; "
                 f"set PROMPTOPT_DATA_DIR to the shared data dir (e.g. ../shared/data)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r["sentence"], int(r["label"])) for r in rows[:n]]


def requests_for(examples: Sequence[tuple[str, int]]) -> list[LLRequest]:
    return [LLRequest(TEMPLATE.format(prompt=PROMPT, sentence=sentence), label)
            for sentence, _ in examples for label in LABELS]


def matmul_flops(n: int = 1024, seconds: float = 2.0) -> tuple[float, float]:
    """Best fp32 GEMM rate (FLOP/s) this process gets, with the current torch thread count: by the wall
    clock, and by this process's CPU time (with one thread, what other processes on the cores do not add)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best, best_cpu, deadline = 0.0, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start, cpu = time.perf_counter(), time.process_time()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
        best_cpu = max(best_cpu, 2 * n**3 / max(time.process_time() - cpu, 1e-9))
    return best, best_cpu


def distinct_prefix_tokens(token_lists: Sequence[Sequence[int]]) -> int:
    """Nodes of the token trie of all inputs: what a perfect prefix cache must still compute."""
    total, previous = 0, ()
    for tokens in sorted(tuple(t) for t in token_lists):
        shared = next((i for i, (a, b) in enumerate(zip(previous, tokens)) if a != b),
                      min(len(previous), len(tokens)))
        total += len(tokens) - shared
        previous = tokens
    return total


def best_of(repeats: int, run: Callable[[], list[float]]) -> tuple[float, list[float]]:
    """Fastest of `repeats` runs (other processes share the cores; the minimum is least disturbed)."""
    best: tuple[float, list[float]] | None = None
    for _ in range(repeats):
        start = time.perf_counter()
        logprobs = run()
        elapsed = time.perf_counter() - start
        if best is None or elapsed < best[0]:
            best = (elapsed, logprobs)
    assert best is not None
    return best


def best_of_alternating(repeats: int, runs: dict[str, Callable[[], list[float]]]
                        ) -> tuple[dict[str, tuple[float, list[float]]], dict[str, float]]:
    """best_of for several methods taking turns, so that a change of load hits all of them alike; also
    each method's least CPU time (process time) over its runs."""
    best: dict[str, tuple[float, list[float]]] = {}
    cpu_best: dict[str, float] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start, cpu = time.perf_counter(), time.process_time()
            logprobs = run()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, logprobs)
            cpu_best[name] = min(cpu, cpu_best.get(name, cpu))
    return best, cpu_best


def padded(backend: HFBackend, reqs: list[LLRequest]) -> list[float]:
    """Ours with packing off: left-padded batches over the expanded prefix KV."""
    backend.pack_scoring = False
    try:
        return score_ours(backend, reqs)
    finally:
        backend.pack_scoring = backend._packing_applies()


def score_ours(backend: HFBackend, reqs: list[LLRequest]) -> list[float]:
    results = backend.loglikelihood(reqs)
    errors = [r.error for r in results if r.error]
    if errors:
        raise SystemExit(f"scoring bench: hf backend returned an error: {errors[0]}")
    return [r.logprob for r in results]


def score_naive(backend: HFBackend, reqs: list[LLRequest]) -> list[float]:
    """One full forward per request, log-softmax over the whole vocabulary at every position."""
    out = []
    with torch.inference_mode():
        for req in reqs:
            whole = backend.tokenizer(req.context + req.continuation)["input_ids"]
            n_ctx = len(backend.tokenizer(req.context)["input_ids"])
            logprobs = torch.log_softmax(backend.model(torch.tensor([whole])).logits[0].float(), -1)
            out.append(sum(logprobs[i - 1, whole[i]].item() for i in range(n_ctx, len(whole))))
    return out


def lm_eval_scorer(backend: HFBackend, batch_size: int) -> Callable[[list[LLRequest]], list[float]] | str:
    """lm-eval's HFLM over our already-loaded model, or the reason it cannot run."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        return (f"lm_eval is not importable ({e.name or e}); install lm-eval==0.4.13 in a separate venv "
                f"(see bench/README.md) to compare")
    lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, backend="causal",
              batch_size=batch_size, device=backend.device, max_length=backend.max_length)

    def score(reqs: list[LLRequest]) -> list[float]:
        instances = [Instance(request_type="loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=i)
                     for i, r in enumerate(reqs)]
        return [logprob for logprob, _ in lm.loglikelihood(instances, disable_tqdm=True)]

    return score


def cache_passes(backend: HFBackend, reqs: list[LLRequest]) -> tuple[list[dict[str, float | int]], bool]:
    """The requests through a fresh response cache twice: what each pass sent to the model and its time,
    and whether both passes gave the same log-likelihoods."""
    passes, logprobs = [], []
    with tempfile.TemporaryDirectory() as tmp, ResponseCache(Path(tmp) / "responses.sqlite") as cache:
        cached = CachedBackend(backend, cache)
        for _ in range(2):
            misses, hits, start = cached.misses, cached.hits, time.perf_counter()
            results = cached.loglikelihood(reqs)
            seconds = time.perf_counter() - start
            if any(r.error for r in results):
                raise SystemExit(f"scoring bench: cached pass returned an error: {next(r.error for r in results if r.error)}")
            passes.append({"seconds": round(seconds, 3), "model_requests": cached.misses - misses,
                           "model_calls": sum(r.usage.calls for r in results), "cache_hits": cached.hits - hits})
            logprobs.append([r.logprob for r in results])
    return passes, logprobs[0] == logprobs[1]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def predictions(logprobs: Sequence[float]) -> list[int]:
    pairs = zip(logprobs[0::2], logprobs[1::2])
    return [int(positive > negative) for negative, positive in pairs]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="SST-2 test examples")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per forward for ours and lm-eval (default: the hf backend's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest counts")
    parser.add_argument("--naive-n", type=int, default=None, help="examples for the slow naive loop (default --n)")
    parser.add_argument("--skip-lm-eval", action="store_true")
    parser.add_argument("--skip-padded", action="store_true", help="skip ours with packing off")
    parser.add_argument("--skip-cache", action="store_true", help="skip the two passes through the response cache")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default runs/bench/scoring-<time>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    examples = load_sst2(args.n)
    reqs = requests_for(examples)
    backend = HFBackend("embedded", device="cpu", dtype="float32", batch_size=args.batch_size)
    params = sum(p.numel() for p in backend.model.parameters())
    token_lists = [backend.tokenizer(r.context + r.continuation)["input_ids"] for r in reqs]
    total_tokens = sum(len(t) for t in token_lists)
    minimal_tokens = distinct_prefix_tokens([t[:-1] for t in token_lists])
    peak, peak_cpu = matmul_flops()
    roofline_eps = peak / (2 * params * minimal_tokens / len(examples))
    roofline_cpu_eps = peak_cpu / (2 * params * minimal_tokens / len(examples))
    gold = [label for _, label in examples]

    runs: dict[str, tuple[float, list[float], int]] = {}  # method -> (seconds, logprobs, examples)
    ours_runs = {"promptopt hf": lambda: score_ours(backend, reqs)}
    if not args.skip_padded:
        ours_runs["hf padded"] = lambda: padded(backend, reqs)
    best, cpu_seconds = best_of_alternating(args.repeats, ours_runs)
    for method, (seconds, logprobs) in best.items():
        runs[method] = (seconds, logprobs, len(examples))
    ours = runs["promptopt hf"][1]
    notes: dict[str, str] = {}
    if backend.pack_scoring:
        notes["promptopt hf"] = "packed"
    # CPU time: with one thread, the roofline share that the machine's other load does not distort.
    by_cpu = {method: {"cpu_seconds": round(secs, 3), "roofline_fraction_cpu": round(
        len(examples) / secs / roofline_cpu_eps, 3)} for method, secs in cpu_seconds.items()}
    packing: dict[str, float] = {}
    if "hf padded" in runs:
        packing = {"speedup": runs["hf padded"][0] / runs["promptopt hf"][0],
                   "speedup_cpu": cpu_seconds["hf padded"] / cpu_seconds["promptopt hf"],
                   "max_abs_logprob_diff": max(abs(a - b) for a, b in zip(ours, runs["hf padded"][1]))}
    scorer = None if args.skip_lm_eval else lm_eval_scorer(backend, backend.batch_size)
    if callable(scorer):
        seconds, lm = best_of(args.repeats, lambda: scorer(reqs))
        runs["lm-eval HFLM"] = (seconds, lm, len(examples))
    else:
        print(f"note: skipping lm-eval: {scorer or '--skip-lm-eval'}", file=sys.stderr)
    naive_n = min(args.naive_n or len(examples), len(examples))
    seconds, naive = best_of(1, lambda: score_naive(backend, reqs[:2 * naive_n]))
    runs["naive loop"] = (seconds, naive, naive_n)
    if naive_n < len(examples):
        notes["naive loop"] = f"first {naive_n} examples"

    lm_eps = runs["lm-eval HFLM"][2] / runs["lm-eval HFLM"][0] if "lm-eval HFLM" in runs else None
    ours_pred = predictions(ours)
    table: list[Measured] = []
    for method, (secs, logprobs, n) in runs.items():
        eps = n / secs
        pred = predictions(logprobs)
        table.append(Measured(
            method, round(secs, 3), round(eps, 2), round(total_tokens * n / len(examples) / secs, 1),
            round(eps / lm_eps, 2) if lm_eps else None, round(eps / roofline_eps, 3),
            round(sum(p == g for p, g in zip(pred, gold)) / n, 3),
            round(sum(p == o for p, o in zip(pred, ours_pred)) / n, 3), notes.get(method, "")))

    header = f"{'method':<14}{'seconds':>9}{'ex/s':>8}{'tok/s':>9}{'x lm-eval':>10}{'roofline':>10}{'acc':>7}{'agree':>7}"
    print(header)
    for m in table:
        ratio = f"{m.ratio_to_lm_eval:.2f}" if m.ratio_to_lm_eval is not None else "-"
        print(f"{m.method:<14}{m.seconds:>9.2f}{m.examples_per_s:>8.2f}{m.tokens_per_s:>9.0f}{ratio:>10}"
              f"{m.roofline_fraction:>10.1%}{m.accuracy:>7.3f}{m.agreement_with_ours:>7.3f}  {m.note}")
    print(f"{len(examples)} examples, {len(reqs)} requests, {total_tokens} tokens ({minimal_tokens} distinct "
          f"prefix tokens); {params / 1e6:.1f}M params; fp32 matmul {peak / 1e9:.0f} GFLOP/s with "
          f"{torch.get_num_threads()} threads; roofline {roofline_eps:.1f} ex/s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for method, cpu in by_cpu.items():
        print(f"{method} by CPU time: {cpu['cpu_seconds']:.2f} s, {cpu['roofline_fraction_cpu']:.1%} of the roofline "
              f"by CPU time ({peak_cpu / 1e9:.0f} GFLOP/s per CPU second)")
    if packing:
        print(f"promptopt hf against hf padded, same run: {packing['speedup']:.3f}x examples/s by wall clock, "
              f"{packing['speedup_cpu']:.3f}x by CPU time; largest log-likelihood difference "
              f"{packing['max_abs_logprob_diff']:.2e} nats")

    cache: dict[str, object] = {}
    if not args.skip_cache:
        (first, second), same = cache_passes(backend, reqs)
        cache = {"first_pass": first, "second_pass": second, "identical_logprobs": same}
        print(f"response cache: first pass {first['seconds']:.2f} s, {first['model_requests']} requests to the "
              f"model; second pass {second['seconds']:.3f} s, {second['model_requests']} requests to the model, "
              f"{second['cache_hits']} cache hits; logprobs {'identical' if same else 'DIFFER'}")

    out = args.out or Path("runs") / "bench" / f"scoring-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "examples": len(examples), "requests": len(reqs), "tokens": total_tokens,
        "distinct_prefix_tokens": minimal_tokens, "prompt_tokens": len(backend.tokenizer(PROMPT)["input_ids"]),
        "params": params, "matmul_flops": peak, "roofline_examples_per_s": roofline_eps,
        "matmul_flops_cpu": peak_cpu, "roofline_examples_per_cpu_s": roofline_cpu_eps, "by_cpu_time": by_cpu,
        "threads": torch.get_num_threads(), "batch_size": backend.batch_size, "repeats": args.repeats,
        "pack_scoring": backend.pack_scoring, "packed_tokens": PACKED_TOKENS, "packed_vs_padded": packing,
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name(),
        "cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
        "results": [asdict(m) for m in table], "cache": cache}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Optimize a whole program: a two-step pipeline written as a plain Python function, making its own model calls.

Step 1 (component "extract") has the model write down what matters in a LIAR record (the claim and who made
it); step 2 (component "answer") judges, from that extract alone, whether the statement is a lie (" Yes" /
" No" by log-likelihood). promptopt sees only `evaluate(components, examples) -> [Result]`: it proposes new
component texts (one component per proposal, in turns), caches, logs every result with its trace, and
reports the best program on held-out test examples.

    python examples/program_pipeline.py                 # the embedded model on CPU: a few minutes
    python examples/program_pipeline.py --seed 1 --test 100   # another seed, 100 test records
    python examples/program_pipeline.py --resume RUN_DIR      # resume a run killed midway (no result is redone)
    promptopt optimize --program examples/program_pipeline.py:program --strategy hill_climb \
        --optimizer-model none --budget 24 --set hill_climb.candidates=2     # the same from the CLI
    promptopt optimize --resume RUN_DIR                                            # ... and its resume

`PIPELINE_TEST=N` in the environment sets the number of test records when the CLI imports this file.
"""
import argparse
import os

import promptopt
from promptopt.backends.base import GenRequest, LLRequest
from promptopt.backends.hf import HFBackend
from promptopt.resolved import load_task
from promptopt.scoring.cache import CachedBackend, ResponseCache, default_cache_path

# The harness's own client (any client works; promptopt never sees it), behind promptopt's response cache,
# so an extract that two programs share is generated once.
lm = CachedBackend(HFBackend(model="embedded"), ResponseCache(default_cache_path()))
liar = load_task("liar", options={"dev_size": 8})  # the user's data: here LIAR's records (ProTeGi's files)
dev, all_test = list(liar.split("dev")), list(liar.split("test"))


def evaluate(components, examples):
    """The program on a batch of examples: two model calls per example, one score each."""
    extracts = lm.generate([GenRequest(prompt=f"{components['extract']}\n\n{ex.input}\n\nWhat matters:",
                                       max_tokens=24, stop=("\n\n",)) for ex in examples])
    facts = [e.text.strip() for e in extracts]
    asks = [f"{components['answer']}\n\n{f}\n\nIs the statement a lie? Answer:" for f in facts]
    lls = lm.loglikelihood([LLRequest(a, opt) for a in asks for opt in (" No", " Yes")])
    results = []
    for i, ex in enumerate(examples):
        no, yes = lls[2 * i].logprob, lls[2 * i + 1].logprob
        results.append(promptopt.Result(score=float((yes > no) == (ex.label == 1)), output="Yes" if yes > no else "No",
                                        trace={"extract": facts[i], "logprob_yes": yes, "logprob_no": no}))
    return results


def make_program(n_test: int) -> promptopt.Program:
    return promptopt.Program(
        {"extract": ("Write down the claim in this record and who made it, in one sentence.",
                     "pulls the claim and its speaker out of a LIAR record"),
         "answer": ("Decide whether the statement below is false.", "judges the claim from the extract alone")},
        evaluate, dev=dev, test=all_test[:n_test], batch_size=8, name="liar-pipeline")


program = make_program(int(os.environ.get("PIPELINE_TEST", "8")))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", type=int, help="test records (default: $PIPELINE_TEST, else 8)")
    p.add_argument("--resume", metavar="RUN_DIR")
    args = p.parse_args()
    if args.test:
        program = make_program(args.test)
    report = promptopt.optimize(program=program, strategy="hill_climb", optimizer_model=None, resume=args.resume,
                                budget={"max_examples": 24}, strategy_options={"candidates": 2}, seed=args.seed)
    print("run:", report.run_dir, "| stop:", report.stop_reason)
    print(f"seed program: dev {report.seed_dev:.3f} test {report.seed_test}")
    print(f"best program: dev {report.best_dev:.3f} test {report.best_test}")
    if report.significance:
        print(f"paired test (best vs seed): p = {report.significance.get('p')}")
    for name, text in report.best_components.items():
        changed = "changed" if text != program.components[name] else "unchanged"
        print(f"  {name} ({changed}): {text}")

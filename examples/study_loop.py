"""Drive promptopt from your own loop (ask/tell, in the style of optuna): you score, promptopt proposes.

Your loop asks for a trial (candidates, each a set of component texts, and the examples to score them on),
scores it however it likes (here: the embedded model, LIAR, " Yes"/" No" by log-likelihood) and tells the
results back. The run log, budget, resume and final report (its finalists and test examples come as trials
too) are those of `optimize`. Stop any time (`study.close()`, or kill the process) and resume:

    python examples/study_loop.py              # the embedded model on CPU, about a minute
    python examples/study_loop.py RUN_DIR      # resume: trials already in the log are not asked again
"""
import sys

import promptopt
from promptopt.backends.base import LLRequest
from promptopt.backends.hf import HFBackend
from promptopt.resolved import load_task

lm = HFBackend(model="embedded")
liar = load_task("liar", options={"dev_size": 24})
program = promptopt.Program({"instruction": ("Is the statement below a lie? Answer Yes or No.",
                                             "asks the model to judge a LIAR record")},
                            evaluate=None, dev=list(liar.split("dev")), test=list(liar.split("test"))[:24],
                            version="ll-yes-no-1", name="liar-study")  # version: keys the result cache


def my_scores(components, examples):
    """The user's own scoring: one log-likelihood call for the whole batch."""
    asks = [f"{components['instruction']}\n\n{ex.input}\nAnswer:" for ex in examples]
    lls = lm.loglikelihood([LLRequest(a, opt) for a in asks for opt in (" No", " Yes")])
    return [promptopt.Result(float((lls[2 * i + 1].logprob > lls[2 * i].logprob) == (ex.label == 1)))
            for i, ex in enumerate(examples)]


resume = sys.argv[1] if len(sys.argv) > 1 else None
study = promptopt.Study(program, "hill_climb", optimizer_model=None, budget={"max_examples": 96},
                        strategy_options={"candidates": 3}, resume=resume)
while (trial := study.ask()) is not None:
    study.tell(trial, [my_scores(item.components, item.examples) for item in trial.items])
    print(f"trial {trial.number} ({trial.phase}): {len(trial.items)} candidates, {trial.n_examples} examples")
report = study.report
print("run:", study.run_dir)
print(f"seed: dev {report.seed_dev:.3f} test {report.seed_test:.3f} | best: dev {report.best_dev:.3f} "
      f"test {report.best_test:.3f} | {report.best_components['instruction']!r}")
print("seed vs best on test:", report.significance)

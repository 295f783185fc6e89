"""Optimize a pipeline that makes its own HTTP calls: the `openai` client, to any OpenAI-compatible server.

The pipeline answers "is this customer message a complaint?" (the demo task's messages) with up to two chat
calls per message: the first sends the "system" component as the system message and the "ask" component
with the message; when the reply names neither answer, a second call adds the "retry" component. Its own
client, retries, parsing and fallback are none of promptopt's business: promptopt sees only
`evaluate(components, examples) -> [Result]` (async here, so 8 examples run at once), proposes new
component texts (one per proposal, in turns), caches and logs every result with its trace (the replies),
and reports the best program on held-out test messages.

    python examples/program_http.py                                   # starts the repo's test server itself
    python examples/program_http.py --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-0.5B-Instruct
                                                                      # vLLM (CPU or GPU), or any such server
    python examples/program_http.py --resume RUN_DIR                  # continue a stopped run
"""
from __future__ import annotations

import argparse
import os
import re

import openai

import promptopt
from promptopt.resolved import load_task

ANSWERS = ("yes", "no")
demo = load_task("demo")  # the user's data: here the demo task's hand-written messages
DEV, TEST = list(demo.split("dev"))[:16], list(demo.split("test"))


def parse(reply: str) -> str | None:
    """The first "yes" or "no" in a reply, or None."""
    found = re.search(r"\b(yes|no)\b", reply.lower())
    return found.group(1) if found else None


def make_program(base_url: str, model: str) -> promptopt.Program:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "unused"),
                                max_retries=3, timeout=60)

    @promptopt.evaluator(components=("system", "ask", "retry"), version="http-1")
    async def evaluate(components, examples):
        results = []
        for ex in examples:
            messages = [{"role": "system", "content": components["system"]},
                        {"role": "user", "content": f"{components['ask']}\n\nMessage: {ex.input}"}]
            replies = []
            for attempt in range(2):
                out = await client.chat.completions.create(model=model, messages=messages, max_tokens=8,
                                                           temperature=0)
                replies.append(out.choices[0].message.content or "")
                if parse(replies[-1]) is not None or attempt:
                    break
                messages += [{"role": "assistant", "content": replies[-1]},
                             {"role": "user", "content": components["retry"]}]
            said, gold = parse(replies[-1]), "yes" if ex.label == 1 else "no"
            results.append(promptopt.Result(
                score=float(said == gold), output=said or "",
                feedback=None if said == gold else f"answered {said or 'neither yes nor no'}; the answer is {gold}",
                trace={"replies": replies}))
        return results

    return promptopt.Program(
        {"system": ("You sort customer messages for a support team.", "the system message of every call"),
         "ask": ("Is this message a complaint? Answer yes or no.", "the question, sent with each message"),
         "retry": ("Answer with one word: yes or no.", "sent when the first reply names neither answer")},
        evaluate, dev=DEV, test=TEST, concurrency=8, name="complaint-http")


def main(base_url: str, model: str, *, resume: str | None = None, budget: int = 48, **settings) -> promptopt.Report:
    """Optimize the pipeline on the server at `base_url`; `settings`: any other optimize() settings (run_dir, seed...)."""
    return promptopt.optimize(program=make_program(base_url, model), strategy="hill_climb", optimizer_model=None,
                              resume=resume, budget={"max_examples": budget}, strategy_options={"candidates": 2},
                              **settings)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", help="an OpenAI-compatible server's /v1 URL (default: start the test server)")
    p.add_argument("--model", default="test-model")
    p.add_argument("--resume", metavar="RUN_DIR")
    args = p.parse_args()
    if args.base_url:
        report = main(args.base_url, args.model, resume=args.resume)
    else:
        from promptopt.testing.openai_server import FakeOpenAIServer  # a deterministic "picking" chat model
        with FakeOpenAIServer(args.model, chat_only=True) as server:
            report = main(server.url, args.model, resume=args.resume)
    print("run:", report.run_dir, "| stop:", report.stop_reason)
    print(f"seed program: dev {report.seed_dev:.3f} test {report.seed_test}")
    print(f"best program: dev {report.best_dev:.3f} test {report.best_test}")
    for name, text in report.best_components.items():
        print(f"  {name}: {text}")

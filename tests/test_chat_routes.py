"""Choose tasks on hosted chat models: the three scoring routes, chat-format prompts, the start-up probe
and odd servers, against promptopt's own OpenAI-compatible server (real HTTP on 127.0.0.1, nothing mocked).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from promptopt.scoring import routes
from promptopt.backends.base import GenRequest, LLRequest
from promptopt.backends.openai import onetoken
from promptopt.backends.openai.backend import OpenAIBackend
from promptopt.backends.openai.chat import ChatParams, first_top_logprobs
from promptopt.scoring.cache import CachedBackend
from promptopt.cli import main
from promptopt.config import strategy_config
from promptopt.errors import CapabilityError, ConfigError
from promptopt.registry import get
from promptopt.scoring.scorer import Job, PromptParts, score_jobs
from promptopt.task import Task
from promptopt.testing import make_run
from promptopt.testing.openai_server import FakeOpenAIServer, pick_logprobs
from promptopt.types import Example

MODEL = "gpt-4o-mini"
KEY_ENV = "PROMPTOPT_TEST_OPENAI_KEY"
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("quick_thread_switches")]


@pytest.fixture
def backend():
    made: list[OpenAIBackend] = []

    def factory(url: str, **kw) -> OpenAIBackend:
        opts = dict(api_key_env=KEY_ENV, backoff=0.01, max_wait=1, timeout=5, max_retries=2)
        made.append(OpenAIBackend(kw.pop("model", MODEL), base_url=url, **{**opts, **kw}))
        return made[-1]
    yield factory
    for b in made:
        b.close()


def optimize(tmp_path: Path, url: str, *extra: str) -> int:
    return main(["optimize", "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none",
                 "--backend", "openai", "--model", MODEL, "--set", f"backend.base_url={url}", "--budget", "60",
                 "--run-dir", str(tmp_path / "runs"), "--no-cache", *extra])


def run_dir(tmp_path: Path) -> Path:
    (only,) = list((tmp_path / "runs").iterdir())
    return only


def results(run: Path) -> list[dict]:
    evs = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    return [r for e in evs if e["type"] == "eval" and "results" in e for r in e["results"]]


# --- the command, on each route --------------------------------------------------------------

@pytest.mark.parametrize("route", ["auto", "chat_logprobs", "generate"])
def test_demo_runs_to_its_report_on_a_chat_only_server(route, tmp_path, capsys):
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        assert optimize(tmp_path, srv.url, "--set", f"backend.choose_route={route}") == 0
        assert srv.requests["/v1/completions"] == 1  # the probe's echo, refused as OpenAI refuses it
        chats = [b for b in srv.bodies if "messages" in b]
    run = run_dir(tmp_path)
    taken = "chat_logprobs" if route == "auto" else route
    config = json.loads((run / "config.json").read_text())
    assert config["fingerprints"]["target"].endswith(f"|route:{taken}")  # recorded, and part of the cache key
    rs = results(run)
    assert rs and all(r.get("error") is None for r in rs)
    scored = [b for b in chats if b.get("logprobs")]
    if taken == "chat_logprobs":
        assert all(b["top_logprobs"] == 20 and b["max_tokens"] == 1 for b in scored[1:])  # [0] is the probe
        assert all("option_logprobs" in r for r in rs if "fallback" not in r.get("flags", ()))
    else:
        assert len(scored) == 1  # the probe only
        failures = [r for r in rs if "format_failure" in r.get("flags", ())]
        assert failures and all(r["score"] == 0.0 and r["output"] not in ("other", "complaint") for r in failures)
    # The template names no option, so every chat prompt carries the answer-format line, and says so.
    assert all("format_line" in r["flags"] for r in rs)
    assert all("Answer with one word: other or complaint." in b["messages"][-1]["content"] for b in chats[2:])
    assert "format failures" in capsys.readouterr().out


def test_forced_route_the_server_cannot_serve_is_one_line_and_exit_2(tmp_path, capsys):
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        assert optimize(tmp_path, srv.url, "--set", "backend.choose_route=loglikelihood") == 2
        scored = [b for b in srv.bodies if "messages" in b and b["messages"][0]["content"] != "Say OK."]
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "choose_route=loglikelihood" in err and "not supported in the v1/completions" in err
    assert not scored and not (tmp_path / "runs").exists()


def test_choose_route_is_validated_before_any_request():
    with pytest.raises(ConfigError, match="choose_route"):
        OpenAIBackend(MODEL, base_url="http://127.0.0.1:9/v1", choose_route="logits")


# --- the start-up probe: reasoning models, top_logprobs caps ------------------------------------------

def test_probe_finds_what_a_reasoning_model_refuses(backend, tmp_path, capsys):
    with FakeOpenAIServer(MODEL, chat_only=True, reasoning=True, max_lifetime=60) as srv:
        b = backend(srv.url)
        assert b.choose_route == "generate" and b.top_logprobs == 0
        out = b.generate([GenRequest(messages=(("user", "good or bad?"),), max_tokens=8)])
        assert out[0].error is None and out[0].text
        sent = srv.bodies[-1]
        assert sent["max_completion_tokens"] == 8 and "max_tokens" not in sent and "temperature" not in sent
        with pytest.raises(CapabilityError) as e:
            backend(srv.url, choose_route="chat_logprobs").check()
        assert "'logprobs' is not supported" in str(e.value) and "\n" not in str(e.value)
        assert optimize(tmp_path, srv.url) == 0  # the command, on the generate route
    assert results(run_dir(tmp_path))


def test_probe_takes_the_most_top_logprobs_the_server_allows(backend):
    with FakeOpenAIServer(MODEL, chat_only=True, max_top_logprobs=5, max_lifetime=60) as srv:
        b = backend(srv.url)
        assert b.choose_route == "chat_logprobs" and b.top_logprobs == 5
        r = b.generate([GenRequest(messages=(("user", "one two three four five six seven"),), max_tokens=1,
                                   top_logprobs=20)])[0]
        assert srv.bodies[-1]["top_logprobs"] == 5 and len(r.top_logprobs) == 5
        want = pick_logprobs([{"role": "user", "content": "one two three four five six seven"}])[:5]
        assert r.top_logprobs == tuple(want)


def test_server_with_echo_keeps_the_loglikelihood_route(backend, openai_server):
    b = backend(openai_server.url, model="test-model")
    assert b.choose_route == "loglikelihood" and not b.fingerprint().count("route:")


# --- scoring: one result shape per route ---------------------------------------------------------------

def sentiment_task(**kw) -> Task:
    rows = [("a fine film", 1), ("dull and long", 0), ("loved every minute", 1), ("a mess", 0)]
    exs = [Example(f"e{i}", t, ["negative", "positive"][y], label=y) for i, (t, y) in enumerate(rows)]
    return Task(name="senti", splits={"train": exs, "dev": exs}, template="{prompt}\nReview: {input}\nSentiment:",
                output="choose", options=(" negative", " positive"), seed_prompts=("Rate the review.",), **kw)


def test_chat_logprobs_reads_the_options_from_the_first_token(backend):
    task = sentiment_task()
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        b = CachedBackend(backend(srv.url), None)
        (ev,) = score_jobs(task, b, [Job("c", "Rate the review.", "dev", tuple(task.splits["dev"]))])
        bodies = [x for x in srv.bodies if x.get("top_logprobs") and "Review:" in x["messages"][-1]["content"]]
    for r, ex in zip(ev.results, task.splits["dev"]):  # requests run concurrently: find each one's own
        (body,) = [x for x in bodies if f"Review: {ex.input}\n" in x["messages"][-1]["content"]]
        tops = dict(pick_logprobs(body["messages"])[:20])
        lps = [tops.get("negative"), tops.get("positive")]
        assert None not in lps  # both options are words of the prompt (the answer-format line)
        total = math.log(sum(math.exp(x) for x in lps))
        assert r.option_logprobs == pytest.approx([x - total for x in lps])
        assert r.output == ["negative", "positive"][lps.index(max(lps))]
        assert r.score == float(r.output == ex.target)


def test_generate_route_matches_replies_and_counts_format_failures(backend):
    task = sentiment_task()
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        b = backend(srv.url, choose_route="generate")
        (ev,) = score_jobs(task, b, [Job("c", "Rate the review.", "dev", tuple(task.splits["dev"]))])
        bodies = [x for x in srv.bodies if "Review:" in str(x.get("messages"))]
    for r, ex in zip(ev.results, task.splits["dev"]):
        (body,) = [x for x in bodies if f"Review: {ex.input}\n" in x["messages"][-1]["content"]]
        reply = pick_logprobs(body["messages"])[0][0]
        if reply in ("negative", "positive"):
            assert r.output == reply and r.score == float(reply == ex.target) and "format_failure" not in r.flags
        else:
            assert r.output == reply and r.score == 0.0 and "format_failure" in r.flags


@pytest.mark.parametrize("server", [dict(bad_utf8=True), dict(preamble="I think the answer is ")])
def test_unreadable_or_cut_replies_are_format_failures_not_crashes(server, backend):
    task = dataclasses.replace(sentiment_task(), max_tokens=3)
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60, **server) as srv:
        b = backend(srv.url, choose_route="generate")
        (ev,) = score_jobs(task, b, [Job("c", "Rate the review.", "dev", tuple(task.splits["dev"]))])
    assert ev.state == "complete"
    assert all(r.score == 0.0 and "format_failure" in r.flags for r in ev.results)


def test_logprobs_that_vanish_mid_run_are_counted_never_rerouted(backend):
    task = sentiment_task()
    with FakeOpenAIServer(MODEL, chat_only=True, logprobs_for=3, max_lifetime=60) as srv:  # the probe is 1
        b = backend(srv.url)
        (ev,) = score_jobs(task, b, [Job("c", "Rate the review.", "dev", tuple(task.splits["dev"]))])
        generated = [x for x in srv.bodies if "messages" in x and not x.get("logprobs")]
    assert b.choose_route == "chat_logprobs"
    assert ev.state == "failed" and sum(1 for r in ev.results if r.error) == 2
    assert "no logprobs" in ev.error
    assert b.stats["failures_by_kind"]["malformed"] == 2 and len(generated) == 1  # only the probe's plain chat


def test_options_sharing_a_first_token_fall_back_to_generate():
    opts = ("World", "World news", "Sports")
    assert routes.option_logprobs((("World", -0.1), ("Sports", -2.0)), opts) is None  # "World" starts two
    lps, floored = routes.option_logprobs((("Sports", -0.5), ("World", -1.0), ("x", -3.0)), opts)
    assert floored == 2 and lps[0] == lps[1] < lps[2]  # the shared token credits neither World option
    lps, floored = routes.option_logprobs((("pos", -0.2), (" Positive", -0.9), ("neg", -2.0), ("so", -4.0)),
                                          ("negative", "positive", "neutral"))
    assert floored == 1 and lps[2] == pytest.approx(-4.0 - math.log(math.exp(-0.2) + math.exp(-0.9) + math.exp(-2)
                                                                     + math.exp(-4.0)))
    assert lps[1] == max(lps)


def test_match_option_rules():
    opts = (" negative", " positive")
    assert routes.match_option("Positive.", opts) == 1
    assert routes.match_option("The sentiment is negative", opts) == 0
    assert routes.match_option("positive or negative", opts) is None  # names both
    assert routes.match_option("good", opts) is None
    assert routes.match_option("positively", opts) is None  # a word, not a substring


def test_options_the_route_cannot_tell_apart_are_refused_at_start(backend):
    task = dataclasses.replace(sentiment_task(), options=(" Yes", " yes."))
    hill_climb = get("strategies", "hill_climb")
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        with pytest.raises(ConfigError) as e:
            make_run(hill_climb(strategy_config(hill_climb, {})), task=task, target=CachedBackend(backend(srv.url), None))
        assert not [x for x in srv.bodies if "Review:" in str(x.get("messages"))]
    assert "chat_logprobs route cannot tell its options apart" in str(e.value) and "\n" not in str(e.value)


# --- chat-format prompts -------------------------------------------------------------------------------

def test_messages_put_system_demos_and_query_in_their_places():
    task = sentiment_task()
    ex, d1, d2 = task.splits["dev"][:3]
    turns = task.messages("Rate it.", ex, (d1, d2), system="You are terse.", answer_line="Answer with one of: x.")
    assert turns == (("system", "You are terse."),
                     ("user", "Review: dull and long\nSentiment:"), ("assistant", "negative"),
                     ("user", "Review: loved every minute\nSentiment:"), ("assistant", "positive"),
                     ("user", "Rate it.\nAnswer with one of: x.\nReview: a fine film\nSentiment:"))
    inline = dataclasses.replace(task, chat_demos="inline").messages("Rate it.", ex, (d1,))
    assert inline == (("user", "Rate it.\n\nReview: dull and long\nSentiment: negative\n\nReview: a fine film\nSentiment:"),)


def test_the_run_sends_a_candidates_demos_as_turns(backend):
    task = sentiment_task()
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        b = backend(srv.url)
        parts = PromptParts("Rate the review.", "Be brief.", tuple(task.splits["train"][1:3]))
        score_jobs(task, b, [Job("c", "unused flat text", "dev", (task.splits["dev"][0],), parts=parts)])
        (sent,) = [x for x in srv.bodies if "Review: a fine film" in str(x.get("messages"))]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sent["messages"][-1]["content"].startswith("Rate the review.\nAnswer with one word: negative or positive.")


def test_no_answer_line_when_the_template_names_the_options(backend):
    task = dataclasses.replace(sentiment_task(), template="{prompt}\nReview: {input}\nNegative or positive?")
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        (ev,) = score_jobs(task, backend(srv.url), [Job("c", "Rate it.", "dev", (task.splits["dev"][0],))])
        sent = srv.bodies[-1]["messages"][-1]["content"]
    assert "Answer with" not in sent and "format_line" not in ev.results[0].flags
    assert routes.answer_format_line((" World", " Sports", " Sci/Tech")) == "Answer with one word: World, Sports or Sci/Tech."
    assert routes.answer_format_line((" World news", " Sports")) == "Answer with only one of: World news or Sports."


def test_generation_keys_without_top_logprobs_are_unchanged():
    from promptopt.backends.base import canonical_hash
    req = GenRequest("hi", max_tokens=5)
    assert req.key() == canonical_hash({"kind": "gen", "prompt": "hi", "messages": (), "max_tokens": 5,
                                        "temperature": 0.0, "stop": (), "seed": None})
    assert GenRequest("hi", max_tokens=5, top_logprobs=20).key() != req.key()


def test_first_top_logprobs_refuses_what_is_not_a_distribution():
    ok = {"logprobs": {"content": [{"token": "a", "logprob": -1.0,
                                    "top_logprobs": [{"token": "b", "logprob": -2.0}, {"token": "a", "logprob": -1.0}]}]}}
    assert first_top_logprobs(ok) == (("a", -1.0), ("b", -2.0))
    for bad in ({"logprobs": None}, {"logprobs": {"content": []}},
                {"logprobs": {"content": [{"top_logprobs": [{"token": "a", "logprob": "NaN"}]}]}}):
        with pytest.raises(ValueError):
            first_top_logprobs(bad)
    assert ChatParams().without("Unsupported parameter: 'max_tokens' ...").max_tokens_key == "max_completion_tokens"
    assert ChatParams().without("the server is down") is None


# --- issue #29: a vLLM server that lies ---------------------------------------------------------------

@pytest.mark.parametrize("lie", ["nan", "negative_index"])
def test_a_lying_one_token_route_is_caught_at_the_probe_and_echo_scores(lie, backend, caplog):
    with FakeOpenAIServer("test-model", vllm=True, lie=lie, max_lifetime=60) as srv:
        b = backend(srv.url, model="test-model")
        assert b.choose_route == "loglikelihood"
        r = b.loglikelihood([LLRequest("The quick brown fox", " jumps")])[0]
        assert r.error is None and math.isfinite(r.logprob)
        assert "one_token" not in b.stats  # scored by echo
    assert "scoring by echo" in caplog.text


def test_label_logprobs_refuses_out_of_range_repeated_indices_and_nan():
    def choice(i, v=-1.0):
        return {"index": i, "logprobs": {"tokens": ["token_id:1"], "top_logprobs": [{"token_id:1": v}]}}
    for choices in ([choice(0), choice(-1)], [choice(0), choice(0)], [choice(0), choice(1, math.nan)]):
        with pytest.raises(ValueError):
            onetoken.label_logprobs({"choices": choices}, 2)
    assert onetoken.label_logprobs({"choices": [choice(1, -2.0), choice(0)]}, 2)[0] == ({1: -1.0}, 1)


def test_strategies_that_need_prompt_loglikelihoods_refuse_a_chat_target(backend):
    pmpo = get("strategies", "pmpo")
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        with pytest.raises(CapabilityError) as e:
            make_run(pmpo(strategy_config(pmpo, {})), target=CachedBackend(backend(srv.url), None))
    assert "needs log-likelihoods" in str(e.value) and "\n" not in str(e.value)


def test_dry_run_shows_the_route_and_the_run_records_it(tmp_path, capsys):
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        assert optimize(tmp_path, srv.url, "--dry-run") == 0
        assert "route      auto: picked at start by the probe" in capsys.readouterr().out
        assert optimize(tmp_path, srv.url, "--dry-run", "--set", "backend.choose_route=generate") == 0
        assert "route      generate (forced)" in capsys.readouterr().out
        assert optimize(tmp_path, srv.url, "--demos", "2", "--set", "task.demo_format=inline") == 0
        demo_turns = [b for b in srv.bodies if "messages" in b and len(b["messages"]) > 1]
    config = json.loads((run_dir(tmp_path) / "config.json").read_text())
    assert config["scoring"] == {"route": "chat_logprobs", "top_logprobs": 20, "demos": "inline",
                                 "answer_format_line": "added where a prompt does not name every option"}
    assert not demo_turns  # inline: every prompt is one user message
    assert "scoring route chat_logprobs" in capsys.readouterr().out


def test_a_server_that_ignores_logprobs_gets_the_generate_route(backend):
    with FakeOpenAIServer(MODEL, chat_only=True, logprobs_for=0, max_lifetime=60) as srv:  # answers without them
        b = backend(srv.url)
        assert b.choose_route == "generate" and b.top_logprobs == 0
        with pytest.raises(CapabilityError, match="no logprobs.content"):
            backend(srv.url, choose_route="chat_logprobs").check()


def test_show_and_report_give_the_format_failure_rate(tmp_path, capsys):
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        assert optimize(tmp_path, srv.url, "--set", "backend.choose_route=generate") == 0
    run = run_dir(tmp_path)
    failed = sum("format_failure" in r.get("flags", ()) for r in results(run))
    capsys.readouterr()
    assert main(["show", str(run)]) == 0
    assert f"scoring route generate · format failures {failed}/{len(results(run))}" in capsys.readouterr().out
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    assert f"format failures {failed}/" in (tmp_path / "report.html").read_text()


def test_a_429_storm_on_the_chat_route_is_retried_and_the_route_kept(backend):
    from promptopt.testing.faultproxy import FaultProxy
    task = sentiment_task()
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv, \
            FaultProxy(srv.url, retry_after=0.01, max_lifetime=60) as proxy:
        b = backend(proxy.url, max_retries=6)
        assert b.choose_route == "chat_logprobs"
        proxy.queue(*["429"] * 8)  # every scoring request is refused at first
        (ev,) = score_jobs(task, b, [Job("c", "Rate the review.", "dev", tuple(task.splits["dev"]))])
    assert ev.state == "complete" and all(r.option_logprobs for r in ev.results)
    assert proxy.injected["429"] == 8 and b.stats["retries_by_kind"]["http_429"] == 8
    assert b.choose_route == "chat_logprobs"


def test_apo_sees_unparseable_replies_as_errors(backend, tmp_path):
    from promptopt.budget import Budget
    from promptopt.loop import Run
    from promptopt.resolved import ResolvedRun
    from promptopt.runlog import RunLog, new_run_dir
    from promptopt.testing.contracts import fake_optimizer
    apo = get("strategies", "apo")
    task = sentiment_task()
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        target = CachedBackend(backend(srv.url, choose_route="generate"), None)
        resolved = ResolvedRun(task=task, strategy=apo(strategy_config(apo, {"rounds": 1})), budget=Budget(max_examples=40))
        run = Run(resolved, target=target, optimizer=fake_optimizer(), log=RunLog(new_run_dir(tmp_path, {})))
        run.run()
    events = [json.loads(line) for line in (run.log.dir / "events.jsonl").read_text().splitlines()]
    failed = {r["output"] for e in events if e["type"] == "eval" for r in e.get("results", ())
              if "format_failure" in r.get("flags", ())}
    asks = " ".join(json.dumps(e["requests"]) for e in events if e["type"] == "optimizer_call")
    # a reply that named no option is shown to the optimizer as the model's (wrong) label
    assert failed and any(f"Model's label: {out}\\n" in asks or asks.endswith(f"Model's label: {out}")
                          for out in failed - {"negative", "positive"})


def test_chat_logprobs_results_come_back_from_the_cache(backend, tmp_path):
    from promptopt.scoring.cache import ResponseCache
    task = sentiment_task()
    job = Job("c", "Rate the review.", "dev", tuple(task.splits["dev"]))
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        b = backend(srv.url)
        first = score_jobs(task, CachedBackend(b, ResponseCache(tmp_path / "c.sqlite")), [job])[0]
        sent = len(srv.bodies)
        again = score_jobs(task, CachedBackend(b, ResponseCache(tmp_path / "c.sqlite")), [job])[0]
        assert len(srv.bodies) == sent  # all four served from the cache
    assert [r.option_logprobs for r in again.results] == [r.option_logprobs for r in first.results]
    assert [r.flags for r in again.results] == [r.flags for r in first.results]


def test_a_resume_on_a_server_that_lost_logprobs_is_refused_not_rerouted(tmp_path, capsys):
    from promptopt.api import load_run_config, prepare
    from promptopt.errors import CapabilityError
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        assert optimize(tmp_path, srv.url) == 0
        run = run_dir(tmp_path)
        (run / "summary.json").unlink()  # as a run killed before its end leaves it
        srv.logprobs_for = srv.chat_logprobs_served  # from now on the server answers without logprobs
        with pytest.raises(CapabilityError) as e:  # the resume keeps the recorded route, which the server lost
            prepare(load_run_config(run), resume_dir=run)
    assert "cannot serve choose_route=chat_logprobs" in str(e.value)


def test_evaluate_run_sends_the_best_candidates_demos_as_turns_as_the_run_did(tmp_path, capsys):
    with FakeOpenAIServer(MODEL, chat_only=True, max_lifetime=60) as srv:
        assert optimize(tmp_path, srv.url, "--demos", "2") == 0
        summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
        assert len(summary["best_demos"]) == 2
        capsys.readouterr()
        sent = len(srv.bodies)
        assert main(["evaluate", "--run", str(run_dir(tmp_path)), "--split", "dev", "--no-cache"]) == 0
        asked = [b for b in srv.bodies[sent:] if "messages" in b]
    assert capsys.readouterr().out.startswith(f"dev score {summary['best_dev']:.4f} ")
    scored = [b for b in asked if b["messages"][-1]["content"] != "Say OK."]  # the start-up probe's left out
    roles = [tuple(m["role"] for m in b["messages"]) for b in scored]
    assert roles and set(roles) == {("user", "assistant", "user", "assistant", "user")}  # two demo turns, the query

"""The fault proxy, seen from a plain HTTP client: each fault looks as it would from a real server."""
from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest

from promptopt.testing.faultproxy import FAULTS, FaultProxy
from promptopt.testing.openai_server import FakeOpenAIServer

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("quick_thread_switches")]
CHAT = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})


def post(proxy: FaultProxy, timeout: float = 5.0) -> http.client.HTTPResponse:
    port = int(proxy.url.split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/chat/completions", body=CHAT, headers={"Content-Type": "application/json"})
    return conn.getresponse()


def test_passes_requests_through_unchanged(openai_server):
    with FaultProxy(openai_server.url) as proxy:
        assert proxy.url.startswith("http://127.0.0.1:") and proxy.url.endswith("/v1")
        resp = post(proxy)
        assert resp.status == 200
        assert json.loads(resp.read())["choices"][0]["message"]["content"] == "echo: hi"
        port = int(proxy.url.split(":")[2].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/v1/models")
        assert json.loads(conn.getresponse().read())["data"][0]["id"] == "test-model"
        assert (proxy.requests, proxy.forwarded, sum(proxy.injected.values())) == (2, 2, 0)
        assert openai_server.requests["/v1/chat/completions"] == 1


@pytest.mark.parametrize("fault,status", [("500", 500), ("502", 502), ("503", 503), ("429_no_retry_after", 429)])
def test_error_statuses(fault, status, openai_server):
    with FaultProxy(openai_server.url) as proxy:
        proxy.queue(fault)
        resp = post(proxy)
        assert resp.status == status and resp.getheader("Retry-After") is None
        assert "injected by faultproxy" in json.loads(resp.read())["error"]["message"]
        assert proxy.injected == {fault: 1} and proxy.forwarded == 0
        assert post(proxy).status == 200  # only the queued request was hit


def test_429_carries_retry_after(openai_server):
    with FaultProxy(openai_server.url, retry_after=2.5) as proxy:
        proxy.queue("429")
        resp = post(proxy)
        assert resp.status == 429 and resp.getheader("Retry-After") == "2.5"


def test_dropped_connection(openai_server):
    with FaultProxy(openai_server.url) as proxy:
        proxy.queue("drop")
        with pytest.raises(http.client.RemoteDisconnected):
            post(proxy)
        assert openai_server.requests["/v1/chat/completions"] == 0


def test_hang_until_the_client_gives_up_and_stop_releases_it(openai_server):
    proxy = FaultProxy(openai_server.url, hang_seconds=20).start()
    try:
        proxy.queue("hang")
        with pytest.raises(socket.timeout):  # the client's 0.3 s, not the proxy's 20 s
            post(proxy, timeout=0.3)
        assert proxy.injected["hang"] == 1 and openai_server.requests["/v1/chat/completions"] == 0
    finally:
        stopping = threading.Thread(target=proxy.stop)
        stopping.start()
        stopping.join(10)  # a generous bound: only a handler that holds up shutdown (20 s) reaches it
        assert not stopping.is_alive() and proxy.stopped.is_set()


def test_malformed_json_is_a_complete_http_message(openai_server):
    with FaultProxy(openai_server.url) as proxy:
        proxy.queue("malformed")
        resp = post(proxy)
        body = resp.read()  # the announced length matches: no transport error
        assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(body)
        with pytest.raises(ValueError):
            json.loads(body)


def test_truncated_body(openai_server):
    with FaultProxy(openai_server.url) as proxy:
        proxy.queue("truncated")
        resp = post(proxy)
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        assert proxy.forwarded == 1


def test_slow_response_still_correct(openai_server):
    with FaultProxy(openai_server.url, slow_seconds=0.3) as proxy:
        proxy.queue("slow")
        resp = post(proxy)
        assert resp.status == 200 and json.loads(resp.read())["choices"]
        assert proxy.injected["slow"] == 1 and proxy.forwarded == 1


def test_rates_are_seeded_and_counted(openai_server):
    def run(seed: int) -> list[int]:
        with FaultProxy(openai_server.url, rates={"503": 0.3, "500": 0.2}, seed=seed) as proxy:
            statuses = [post(proxy).status for _ in range(40)]
            assert proxy.requests == 40
            assert proxy.injected["503"] == statuses.count(503)
            assert proxy.injected["500"] == statuses.count(500)
            assert proxy.forwarded == statuses.count(200)
            return statuses
    first = run(seed=1)
    assert first == run(seed=1)
    assert 5 <= first.count(503) <= 20 and 2 <= first.count(500) <= 15


def test_unreachable_upstream_is_a_502():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with FaultProxy(dead) as proxy:
        resp = post(proxy)
        assert resp.status == 502 and "upstream unreachable" in resp.read().decode()


def test_stops_itself_after_its_lifetime(openai_server):
    proxy = FaultProxy(openai_server.url, max_lifetime=0.2).start()
    url_port = int(proxy.url.split(":")[2].split("/")[0])
    assert proxy.stopped.wait(10)  # set by the lifetime timer's stop(), 0.2 s in
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", url_port), timeout=1).close()


def test_bad_configuration_is_refused(openai_server):
    with pytest.raises(ValueError, match="unknown fault"):
        FaultProxy(openai_server.url, rates={"teapot": 0.1})
    with pytest.raises(ValueError, match="sum to at most 1"):
        FaultProxy(openai_server.url, rates={"500": 0.7, "503": 0.6})
    with pytest.raises(ValueError, match="not an http"):
        FaultProxy("127.0.0.1:8000")
    with pytest.raises(ValueError):
        FaultProxy(openai_server.url).queue("nope")
    assert set(FAULTS) >= {"429", "hang", "drop", "malformed", "truncated", "slow"}


def test_counts_the_concurrency_the_upstream_saw():
    from concurrent.futures import ThreadPoolExecutor

    with FakeOpenAIServer("test-model", delay=0.3, max_lifetime=30) as slow, FaultProxy(slow.url) as proxy:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: post(proxy).status, range(8)))
        assert statuses == [200] * 8
        assert 2 <= proxy.peak_in_flight <= 8  # 8 requests of 0.3 s each were sent at once
        assert proxy._in_flight == 0

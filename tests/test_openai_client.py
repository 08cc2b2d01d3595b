"""sert.openai_client against a local server speaking the chat-completions wire format.

The server (127.0.0.1 only, a port chosen by the OS) injects faults by scenario:
the tag ``[s:NAME]`` in the last user message selects 429 + Retry-After, 500,
connection reset, timeout, malformed or truncated JSON, a body without choices,
a persistent 500, or a 401 that echoes the key back. It is shut down by the
fixture and, failing that, by a timer after 60 s.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from fake_openai import ChatHandler, completion, no_proxy, serving
from sert.openai_client import LLMClient, judge_score, judge_scores, parse_score

KEY = "sk-test-SECRET-9f8e7d6c5b4a"


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.auth: set[str] = set()
        self.inflight = self.max_inflight = 0
        self.broken = {"always500"}  # scenarios that keep failing until removed
        self.requests: list[dict] = []

    def handle_error(self, request, client_address):  # the reset scenario breaks its own socket
        pass


class Handler(ChatHandler):
    def do_POST(self):
        srv: FaultServer = self.server
        req = self.read_request()
        content = req["messages"][-1]["content"]
        m = re.search(r"\[s:(\w+)\]", content) or re.search(r"\[s:(\w+)\]", req["messages"][0]["content"])
        srv.requests.append(req)
        scen = m.group(1) if m else "ok"
        with srv.lock:
            srv.hits[scen] = n = srv.hits.get(scen, 0) + 1
            srv.auth.add(self.headers.get("Authorization", ""))
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
        try:
            self._respond(srv, scen, n, req, content)
        finally:
            with srv.lock:
                srv.inflight -= 1

    def _respond(self, srv, scen, n, req, content):
        def reply(text):
            return completion(req["model"], text, id="c1", usage=True)
        ok = reply(f"echo {content}")
        first = n == 1
        if scen == "slow":
            time.sleep(0.05)
        if scen == "r429" and first:
            return self._send(429, b'{"error": {"message": "slow down", "type": "rate_limit"}}', {"Retry-After": "2"})
        if scen == "r500" and n <= 2:
            return self._send(500, b'{"error": {"message": "boom"}}')
        if scen == "reset" and first:
            return self.reset_connection()
        if scen == "timeout" and first:
            time.sleep(0.8)  # client timeout is 0.3 s
        if scen == "malformed" and first:
            return self._send(200, b'{"id": "c1", "choices": [ {"index": 0, oops')
        if scen == "truncated" and first:
            self._send(200, ok[: len(ok) // 2], length=len(ok))  # promises more than it sends
            self.close_connection = True
            return
        if scen == "nochoices" and first:
            return self._send(200, b'{"id": "c1", "object": "chat.completion"}')
        if scen in srv.broken:
            return self._send(503, b'{"error": {"message": "overloaded"}}')
        if scen == "auth":
            msg = f"Incorrect API key provided: {self.headers.get('Authorization', '')[7:]}"
            return self._send(401, json.dumps({"error": {"message": msg}}).encode())
        if scen == "judge":
            return self._send(200, reply("Score: 7\nClear and complete."))
        reminded = "No score found" in content  # the judge's format reminder
        if scen == "unparseable":  # prose first; a score once reminded of the format
            return self._send(200, reply("Score: 4" if reminded else "The reasoning is mostly fine."))
        if scen == "nologprobs":  # a server that refuses the parameter
            if req.get("logprobs"):
                return self._send(400, b'{"error": {"message": "logprobs is not supported by this model"}}')
            return self._send(200, reply("Score: 5"))
        if scen == "garbled":
            return self._send(200, reply("I cannot rate this."))
        if scen == "logprobs":  # the text says 9; the token probabilities say 0.6 x 8 + 0.3 x 7 (+ 0.1 'x')
            lp = [("Score", {"Score": 1.0}), (":", {":": 1.0}), (" 8", {" 8": 0.6, " 7": 0.3, "x": 0.1})]
            return self._send(200, completion(req["model"], "Score: 9", logprobs=lp if req.get("logprobs") else None))
        return self._send(200, ok)


@pytest.fixture
def server(monkeypatch):
    no_proxy(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with serving(FaultServer(), 60) as srv:
        yield srv


def _client(srv, tmp_path, sleeps, **kw):
    opts = dict(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", cache_path=tmp_path / "cache.jsonl",
                concurrency=4, max_retries=3, timeout=0.3, backoff=0.01, sleep=sleeps.append)
    opts.update(kw)
    return LLMClient("test-model", **opts)


def _msg(text):
    return [{"role": "user", "content": text}]


def test_faults_are_retried_and_answers_are_right(server, tmp_path):
    sleeps: list[float] = []
    scen = ["ok", "r429", "r500", "reset", "timeout", "malformed", "truncated", "nochoices"]
    with _client(server, tmp_path, sleeps) as c:
        replies = c.chat_many([_msg(f"hello [s:{s}]") for s in scen], temperature=0)
    for s, r in zip(scen, replies):
        assert r.ok, (s, r.error)
        assert r.text == f"echo hello [s:{s}]" and r.finish_reason == "stop"
    want = {"ok": 1, "r429": 2, "r500": 3, "reset": 2, "timeout": 2, "malformed": 2, "truncated": 2, "nochoices": 2}
    assert {s: server.hits[s] for s in scen} == want
    assert {s: r.attempts for s, r in zip(scen, replies)} == want
    assert any(w >= 2.0 for w in sleeps), sleeps  # Retry-After: 2 honoured
    assert sum(w < 1 for w in sleeps) == sum(want.values()) - len(want) - 1  # the others back off briefly
    assert server.auth == {f"Bearer {KEY}"}


def test_cache_prevents_a_second_call(server, tmp_path):
    sleeps: list[float] = []
    with _client(server, tmp_path, sleeps) as c:
        a = c.chat_many([_msg("one"), _msg("two"), _msg("one")], temperature=0)
        assert server.hits["ok"] == 2 and c.calls == 2  # the duplicate is sent once
    with _client(server, tmp_path, sleeps) as c:
        b = c.chat_many([_msg("one"), _msg("two")], temperature=0)
        assert c.calls == 0 and c.cache_hits == 2 and all(r.cached for r in b)
        assert [r.text for r in b] == [a[0].text, a[1].text]
        c.chat(_msg("one"), temperature=0.7)  # other params: another request
        assert c.calls == 1
    assert server.hits["ok"] == 3


def test_persistent_failure_is_reported_then_retried_next_run(server, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    sleeps: list[float] = []
    with _client(server, tmp_path, sleeps) as c:
        r = c.chat_many([_msg("x [s:always500]"), _msg("fine")], temperature=0)
        assert not r[0].ok and r[1].ok
        assert "503" in r[0].error and r[0].attempts == 4
        assert [f.key for f in c.failed] == [r[0].key]
        bad = c.chat(_msg("x [s:auth]"))  # 401: not retried
        assert not bad.ok and bad.attempts == 1 and "401" in bad.error
    assert server.hits["always500"] == 4 and server.hits["auth"] == 1
    server.broken.clear()  # the endpoint recovers
    with _client(server, tmp_path, sleeps) as c:
        r2 = c.chat(_msg("x [s:always500]"), temperature=0)
        assert r2.ok and not r2.cached and c.calls == 1
    with _client(server, tmp_path, sleeps) as c:
        assert c.chat(_msg("x [s:always500]"), temperature=0).cached
    # the key is never written anywhere: cache, errors, stdout/stderr, logs
    text = (tmp_path / "cache.jsonl").read_text()
    assert '"ok": false' in text  # failures are recorded, as failures
    out = capsys.readouterr()
    for blob in (text, bad.error, r[0].error, out.out, out.err, caplog.text):
        assert KEY not in blob
    assert "***" in bad.error  # the server echoed it; we scrubbed it


def test_concurrency_is_bounded(server, tmp_path):
    with _client(server, tmp_path, [], concurrency=3) as c:
        rs = c.chat_many([_msg(f"n{i} [s:slow]") for i in range(9)])
    assert all(r.ok for r in rs) and [r.text for r in rs] == [f"echo n{i} [s:slow]" for i in range(9)]
    assert 2 <= server.max_inflight <= 3


def test_missing_key_without_base_url_is_a_clear_error(monkeypatch):
    from sert.errors import SertError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SertError, match="OPENAI_API_KEY"):
        LLMClient("gpt-4o-mini")


@pytest.mark.parametrize("text,score", [
    ("Score: 7", 7.0), ("score: 8/10", 8.0), ("**Score:** 6.5", 6.5), ("I would rate it 9 out of 10.", 9.0),
    ("4", 4.0), ("10.", 10.0), ("Score: 11", None), ("no idea", None), ("", None), (None, None),
    ("The response is coherent. 3/10", 3.0),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_judge_score_through_the_server(server, tmp_path):
    with _client(server, tmp_path, []) as c:
        assert judge_score(c, "Is the sky blue? [s:judge]", "Yes, because of Rayleigh scattering.") == 7.0
        assert judge_scores(c, [("q [s:judge]", "a"), ("q2 [s:always500]", "b")]) == [7.0, None]


def test_make_judge_for_evaluation(server, tmp_path, capsys):
    from sert.errors import SertError
    from sert.openai_client import make_judge

    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    judge = make_judge("openai:judge-model", url, cache_path=tmp_path / "j.jsonl", max_retries=1, timeout=0.3)
    recs = [{"id": "a", "question": "q [s:judge]", "output": "yes"}, {"id": "b", "question": "[s:always500]",
                                                                      "output": "no"}]
    out = judge(recs)
    assert [(r["id"], r["judge"]) for r in out] == [("a", 7.0), ("b", None)]
    assert "1 of 2 requests failed" in capsys.readouterr().err  # a log line (sert.log): stderr
    with pytest.raises(SertError, match="openai:MODEL"):
        make_judge("llama3", url)


def test_unparseable_reply_is_asked_once_more_then_left_unscored(server, tmp_path):
    from sert.openai_client import FORMAT_REMINDER, judge_many

    with _client(server, tmp_path, []) as c:
        res = judge_many(c, [("q [s:unparseable]", "a"), ("q [s:garbled]", "b"), ("q [s:judge]", "c")],
                         logprobs=False)
    assert res == [{"judge": 4.0, "judge_status": "scored"}, {"judge": None, "judge_status": "unscored"},
                   {"judge": 7.0, "judge_status": "scored"}]
    assert server.hits == {"unparseable": 2, "garbled": 2, "judge": 1}  # one reminder each, no more
    reminder = [r for r in server.requests if r["messages"][-1]["content"] == FORMAT_REMINDER]
    assert len(reminder) == 2 and all(r["messages"][1]["role"] == "assistant" for r in reminder)


def test_score_from_token_logprobs_without_parsing(server, tmp_path):
    with _client(server, tmp_path, []) as c:
        with_lp = judge_score(c, "q [s:logprobs]", "a", logprobs=True)
        text_only = judge_score(c, "q [s:logprobs]", "a", logprobs=False)
    assert with_lp == pytest.approx((0.6 * 8 + 0.3 * 7) / 0.9)  # normalised over the score tokens
    assert text_only == 9.0
    sent = [r for r in server.requests if r.get("logprobs")]
    assert len(sent) == 1 and sent[0]["top_logprobs"] == 20
    with _client(server, tmp_path, []) as c:  # the cache keeps the log-probabilities
        assert judge_score(c, "q [s:logprobs]", "a", logprobs=True) == pytest.approx(with_lp) and c.calls == 0


def test_coverage_never_averages_unscored_as_zero(server, tmp_path, capsys):
    from sert.evaluate import format_metrics, summarize
    from sert.openai_client import make_judge

    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    judge = make_judge("openai:j", url, cache_path=tmp_path / "j.jsonl", max_retries=0, timeout=0.3)
    base = {"correct": True, "method": "strict", "fmt_ok": True, "reasoning_tokens": 3, "rep1": 0.0, "pred": "yes"}
    recs = judge([dict(base, id=i, question=f"q{i} [s:{s}]", output="o")
                  for i, s in enumerate(["judge", "garbled", "always500", "judge"])])
    m = summarize(recs)
    assert (m["judge"], m["judge_n"], m["judge_asked"], m["judge_failed"]) == (7.0, 2, 4, 1)
    assert "Judge 7.00 (2/4 scored)" in format_metrics(m)
    assert "7.00 (2/4 scored)" in capsys.readouterr().err
    assert "judge" not in summarize([base])  # no judge: no judge columns


def test_judge_falls_back_to_text_where_logprobs_are_refused(server, tmp_path, capsys):
    from sert.openai_client import make_judge

    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    judge = make_judge("openai:j", url, cache_path=tmp_path / "j.jsonl", max_retries=0, timeout=0.3)
    out = judge([{"id": "a", "question": "q [s:nologprobs]", "output": "o"}])
    assert out[0]["judge"] == 5.0 and out[0]["judge_status"] == "scored"
    assert "refuses log-probabilities" in capsys.readouterr().err and server.hits["nologprobs"] == 2

"""The online teacher and judge against a real OpenAI-compatible server: ``transformers serve``
(pip extra ``transformers[serving]``) with the embedded model on 127.0.0.1, CPU, one thread.

One test, in order: ``sert teach --teacher openai:...`` and ``sert eval --judge openai:...`` end to
end; both rerun with every answer from the cache (no new request in the server's access log);
then the server is killed while ``sert teach`` runs: the failed requests are reported, and a
rerun against a restarted server makes exactly the missing requests and loses nothing.
Skipped, with the reason, where ``transformers serve`` or its extra is not installed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

MISSING = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING) or shutil.which("transformers") is None,
    reason=f"needs `transformers serve` (pip install 'transformers[serving]'); missing: "
           f"{', '.join(MISSING) or 'the transformers command'}")

KEY = "sk-realserver-SECRET-0a1b2c"
POST = '"POST /v1/chat/completions HTTP/1.1" 200'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``transformers serve MODEL`` on a free loopback port; its access log counts the requests."""

    def __init__(self, model_dir: Path, log: Path):
        self.port, self.log = _free_port(), log
        env = dict(os.environ, OMP_NUM_THREADS="1", NO_PROXY="127.0.0.1")
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                ["transformers", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port),
                 "--device", "cpu", "--log-level", "info"],
                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({self.proc.returncode}): {log.read_text()[-800:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.kill()
        pytest.fail(f"transformers serve not ready after 180 s: {log.read_text()[-800:]}")

    def requests(self) -> int:
        return self.log.read_text(errors="replace").count(POST)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session we started, by its id
            self.proc.wait(30)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from sert.models import cache_root, embedded_model_dir

    model_dir = embedded_model_dir()
    cache = tmp_path_factory.mktemp("sert_cache")
    (cache / "models").symlink_to(cache_root() / "models")  # the converted model, a fresh judge cache
    e = dict(os.environ, OPENAI_API_KEY=KEY, SERT_CACHE=str(cache), OMP_NUM_THREADS="1", NO_PROXY="127.0.0.1",
             PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    for v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        e.pop(v, None)
    return model_dir, e, cache


def _sert(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sert", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _teach(env, url, model, out, limit, *extra):
    return _sert(env, "teach", "--task", "strategyqa", "--teacher", f"openai:{model}", "--base-url", url,
                 "--out", str(out), "--limit", str(limit), "--max-tokens", "16", *extra)


def _ok_keys(cache: Path) -> list[str]:
    return [r["key"] for r in map(json.loads, cache.read_text().splitlines()) if r.get("ok")]


def test_teach_and_judge_against_transformers_serve(env, tmp_path):
    model_dir, e, cache = env
    srv = Server(model_dir, tmp_path / "server.log")
    try:
        # teach: 3 questions, two calls each
        t = tmp_path / "teach"
        r = _teach(e, srv.url, model_dir, t, 3)
        assert r.returncode == 0, r.stderr[-2000:]
        summ = json.loads((t / "teach_summary.json").read_text())
        assert summ["total"] == 3 and summ["failed_requests"] == 0 and summ["with_rationale"] == 3
        assert srv.requests() == 6 and len(_ok_keys(t / "openai_cache.jsonl")) == 6
        rationales = (t / "rationales.jsonl").read_text()
        (t / "teach_summary.json").unlink()  # not skipped as finished: answered from the cache
        r = _teach(e, srv.url, model_dir, t, 3)
        assert r.returncode == 0 and srv.requests() == 6 and (t / "rationales.jsonl").read_text() == rationales

        # eval with the judge: 2 questions of the embedded student, few tokens
        ev = tmp_path / "eval"
        args = ("eval", "--task", "strategyqa", "--limit", "2", "--max-new-tokens", "12", "--device", "cpu",
                "--quiet", "--judge", f"openai:{model_dir}", "--judge-base-url", srv.url, "--out", str(ev))
        r = _sert(e, *args)
        assert r.returncode == 0, r.stderr[-2000:]
        m = json.loads((ev / "metrics.json").read_text())
        assert m["judge_asked"] == 2 and m["judge_failed"] == 0 and 0 <= m["judge_n"] <= 2
        assert f"({m['judge_n']}/2 scored)" in r.stdout
        judged = srv.requests() - 6
        assert 2 <= judged <= 4  # one request each, plus one format reminder per unreadable reply
        r = _sert(e, *args)
        assert r.returncode == 0 and srv.requests() == 6 + judged  # the judge cache answered
        assert json.loads((ev / "metrics.json").read_text())["judge_n"] == m["judge_n"]

        # the server dies mid-run: failures reported, retried on the next run, nothing lost
        k = tmp_path / "teach_kill"
        p = subprocess.Popen([sys.executable, "-m", "sert", "teach", "--task", "strategyqa", "--teacher",
                              f"openai:{model_dir}", "--base-url", srv.url, "--out", str(k), "--limit", "4",
                              "--max-tokens", "16", "--concurrency", "1", "--max-retries", "1", "--timeout", "20"],
                             env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        before = srv.requests()
        deadline = time.time() + 120
        while srv.requests() < before + 2 and time.time() < deadline:
            time.sleep(0.1)
        srv.kill()
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        summ = json.loads((k / "teach_summary.json").read_text())
        assert summ["failed_requests"] >= 1 and "failed requests: rerun to retry them" in err  # log lines: stderr
        assert "request failed: " in err and "connection error" in err
        kept = _ok_keys(k / "openai_cache.jsonl")
        assert len(kept) >= 2
    finally:
        srv.kill()
    srv2 = Server(model_dir, tmp_path / "server2.log")
    try:
        r = _teach(e, srv2.url, model_dir, k, 4, "--concurrency", "1")
        assert r.returncode == 0, r.stderr[-2000:]
        summ = json.loads((k / "teach_summary.json").read_text())
        assert summ["failed_requests"] == 0 and summ["with_rationale"] == 4
        after = _ok_keys(k / "openai_cache.jsonl")
        assert after[:len(kept)] == kept and len(set(after)) == 8  # the answers before the kill are kept
        assert srv2.requests() == 8 - len(kept)  # exactly the missing requests were made
    finally:
        srv2.kill()
    for f in [*tmp_path.rglob("*.json*"), *(cache / "judge").rglob("*.json*")]:
        assert KEY not in f.read_text(errors="replace"), f

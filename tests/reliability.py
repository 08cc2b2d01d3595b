"""Shared by the reliability tests (tests/test_reliability_*.py, one file per stage): kill -9 and
rerun, failing APIs, bad input, secrets, two processes.

- SIGKILL: real ``python -m sert ...`` subprocesses on a tiny random Llama (hidden 32, 2 layers,
  the shipped SmolLM2 tokenizer) are killed at points found by polling their files (with a time
  bound); the rerun (the same command, through ``sert.cli.main`` in this process) must give
  exactly what an uninterrupted run gives: equal weights (``torch.equal``), equal predictions
  without duplicates, equal filter/teach outputs, no teacher call repeated once cached.
- Bad input: one case per command where it applies; each must exit 2 with exactly one stderr
  line naming what was expected, no traceback, and leave nothing behind (a fresh --out is not
  created; an existing one is left byte for byte as it was).
- Secrets: a ``sert run`` with an online teacher and judge against a local fault-injecting
  server: the key appears in no file, no output; failed requests are reported and retried.
- Two processes on one run directory: the second refuses, naming the directory.
- Optional: a real OpenAI-compatible server (llama-cpp-python) when installed.

Every server binds 127.0.0.1 and is shut down by a timer if a test hangs; every loop is bounded.
A test module takes the fixtures (``quiet_env`` autouse, ``tiny``, ``server``) by importing this one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fake_openai import ChatHandler, completion, no_proxy, serving
from sert.cli import main

KEY = "sk-test-SECRET-0a1b2c3d4e5f6a7b8c9d"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
for _v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "OPENAI_API_KEY"):
    ENV.pop(_v, None)
VOLATILE = {"wall_s", "load_s", "resumed", "env", "label", "model"}  # metrics that name paths or time


@pytest.fixture(autouse=True, scope="module")
def quiet_env(one_thread):
    # One torch thread (tests/conftest.py): also the killed subprocesses' thread count, so
    # in-process reruns compute bit-equal.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        mp.delenv("OPENAI_API_KEY", raising=False)
        no_proxy(mp)
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny) -> Path:
    """A tiny random LlamaForCausalLM (hidden 32) saved with the shipped SmolLM2 tokenizer (no download)."""
    from transformers import AutoTokenizer

    import sert

    tok = AutoTokenizer.from_pretrained(Path(sert.__file__).parent / "assets" / "smollm2-135m")
    model = make_tiny(tok, hidden=32, positions=512)
    model.generation_config.pad_token_id = tok.pad_token_id
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


# ------------------------------------------------------------------ helpers
def sert(argv, capsys) -> tuple[int, str, str]:
    """The CLI in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def spawn(argv, log: Path, env: dict | None = None) -> subprocess.Popen:
    f = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "sert", *map(str, argv)], env=env or ENV, stdout=f,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, log: Path, what: str, limit: float = 90.0) -> None:
    """Poll ``ready()`` (every ~2 ms, at most ``limit`` s), then SIGKILL ``proc``; the test fails
    if the process ended first (the kill point was never reached)."""
    assert try_kill(proc, ready, log, what, limit), f"{what}: the process ended before the kill point: " + \
        log.read_text(errors="replace")[-1500:]


def try_kill(proc: subprocess.Popen, ready, log: Path, what: str, limit: float = 90.0) -> bool:
    """:func:`kill_when` that returns False instead of failing when the process ended first."""
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.002)
    reached = ready()
    with contextlib.suppress(ProcessLookupError):  # it may end between poll() and the kill
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed = proc.returncode == -signal.SIGKILL
    assert reached or not killed, f"{what}: kill point not reached in {limit} s: " + \
        log.read_text(errors="replace")[-1500:]
    return killed


def spawn_and_kill(argv_for, ready_for, tmp: Path, what: str, attempts: int = 3) -> Path:
    """For a kill point just before the process ends: a fresh try (new --out) when the process
    ended before the poll saw the point (a loaded machine can starve the poller)."""
    for i in range(attempts):
        out, log = tmp / f"{what.split()[0]}-{i}", tmp / f"{what.split()[0]}-{i}.log"
        if try_kill(spawn(argv_for(out), log), lambda: ready_for(out), log, what):
            return out
    pytest.fail(f"{what}: the process ended before the kill point in {attempts} tries")


def complete_checkpoint(d: Path) -> bool:
    """A Trainer checkpoint whose trainer_state.json (written last) is complete. Its mere existence
    is not enough: polling sees the file while it is being written (a kill then leaves it torn,
    a case the code handles by dropping that checkpoint, as a stress run of this test hit)."""
    for f in d.glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(f.read_text())
            return True
        except (OSError, ValueError):
            pass
    return False


def nlines(p: Path) -> int:
    return p.read_bytes().count(b"\n") if p.exists() else 0


def weights(d: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(d / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    bad = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not bad, f"weights differ: {bad[:3]}"


def no_temp_files(d: Path) -> None:
    left = [str(p.relative_to(d)) for p in d.rglob("*") if p.name.endswith(".tmp") or ".final-tmp-" in p.name]
    assert not left, left


def tree(d: Path) -> dict:
    """Every file under ``d`` with its content hash (the lock file aside)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".sert.lock"}


def jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def stable(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in VOLATILE}


def sqa_records(n: int, field: str = "rationale") -> list[dict]:
    from sert.tasks import load_examples
    return [{"question": e.question, "answer": e.answer, field: f"Fact {i} matters here. So it follows."}
            for i, e in enumerate(load_examples("strategyqa", "train", n))]


def write_jsonl(p: Path, recs) -> Path:
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return p


# ------------------------------------------------------------------ a local OpenAI-compatible server
class Server(ThreadingHTTPServer):
    """Chat completions on 127.0.0.1 with injected faults, selected by a tag ``[s:NAME]`` in the
    last message: on the first request of each (tag, teacher|judge): r429 (Retry-After: 1), r500,
    reset, timeout, malformed, truncated; always while ``dead``: ``dead`` (teacher requests, 503);
    always: ``auth`` (teacher requests, a 401 that echoes the key back). Counts every request."""

    daemon_threads = True

    def __init__(self, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay, self.dead = delay, True
        self.lock = threading.Lock()
        self.seen: dict[tuple, int] = {}
        self.requests: list[str] = []   # canonical JSON of each request's messages, in arrival order
        self.auth: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):  # the reset fault breaks its own socket
        pass


class _Handler(ChatHandler):
    def do_POST(self):
        srv: Server = self.server
        req = self.read_request()
        content = req["messages"][-1]["content"]
        judge = content.startswith("You are grading")
        m = re.search(r"\[s:(\w+)\]", content)
        tag = m.group(1) if m else "ok"
        with srv.lock:
            n = srv.seen[(tag, judge)] = srv.seen.get((tag, judge), 0) + 1
            srv.requests.append(json.dumps(req["messages"], sort_keys=True))
            srv.auth.add(self.headers.get("Authorization", ""))
        if srv.delay:
            time.sleep(srv.delay)
        if judge:
            text = "Score: 7"
        elif "Therefore, the answer" in content:
            text = " Yes."
        else:
            text = " Birds have wings. Ice is cold."
        ok = completion(req["model"], text)
        if n == 1 and tag == "r429":
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
        if n == 1 and tag == "r500":
            return self._send(500, b'{"error": {"message": "boom"}}')
        if n == 1 and tag == "reset":
            return self.reset_connection()
        if n == 1 and tag == "timeout":
            time.sleep(1.5)  # the client's timeout is 0.5 s
        if n == 1 and tag == "malformed":
            return self._send(200, b'{"id": "c", "choices": [ {"index": 0, oops')
        if n == 1 and tag == "truncated":
            self._send(200, ok[: len(ok) // 2], length=len(ok))
            self.close_connection = True
            return
        if tag == "dead" and not judge and srv.dead:
            return self._send(503, b'{"error": {"message": "overloaded"}}')
        if tag == "auth" and not judge:
            key = self.headers.get("Authorization", "")[7:]
            return self._send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode())
        return self._send(200, ok)


@pytest.fixture
def server():
    with serving(Server(), 180) as srv:
        yield srv


def synthetic_paths(p: Path, n_q: int = 300, per_q: int = 10) -> Path:
    import random

    rnd = random.Random(0)
    words = "the a dog sky water is blue cold so answer yes no because we know that it has".split()
    recs = []
    for q in range(n_q):
        for j in range(per_q):
            n = rnd.randint(1, 40)
            text = " " + " ".join(rnd.choice(words) for _ in range(n))
            recs.append({"id": f"q{q}", "question": f"Question {q}?", "answer": "yes", "kind": "yesno",
                         "choices": None, "path": j, "branch_rank": j // 2, "sample": j % 2, "text": text,
                         "token_ids": [rnd.randint(0, 60) for _ in range(n)],
                         "logprobs": [round(-rnd.random() * 4, 4) for _ in range(n)], "n_tokens": n,
                         "finish": "eos", "delta": None})
    return write_jsonl(p, recs)

"""A chat-completions stand-in for the tests (OpenAI wire format on 127.0.0.1).

Shared by tests/test_openai_client.py, test_teach.py, test_judge.py and the reliability tests
(tests/reliability.py): each subclasses :class:`ChatHandler` and writes only its ``do_POST`` (which
scenario answers what).
"""
from __future__ import annotations

import contextlib
import json
import math
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def no_proxy(monkeypatch) -> None:
    """Requests to 127.0.0.1 go straight to the test server, whatever proxy the environment sets."""
    for v in PROXY_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@contextlib.contextmanager
def serving(srv, limit_s: float = 60):
    """Run ``srv`` (an http.server on 127.0.0.1) in a thread for the ``with`` block; shut down after
    ``limit_s`` even if a test hangs, and closed on exit."""
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    stopper = threading.Timer(limit_s, srv.shutdown)
    stopper.daemon = True
    stopper.start()
    try:
        yield srv
    finally:
        stopper.cancel()
        srv.shutdown()
        srv.server_close()
        t.join(5)


def completion(model: str, text: str, id: str = "c", usage: bool = False, logprobs: list | None = None) -> bytes:
    """The JSON body of a successful chat completion whose message is ``text``; ``logprobs``:
    per generated token ``(token, {candidate: probability})``, sent as ``logprobs.content``."""
    body = {"id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
    if logprobs is not None:
        body["choices"][0]["logprobs"] = {"content": [
            {"token": t, "logprob": math.log(top[t]), "bytes": None,
             "top_logprobs": [{"token": c, "logprob": math.log(p), "bytes": None} for c, p in top.items()]}
            for t, top in logprobs]}
    if usage:
        body["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    return json.dumps(body).encode()


class ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def read_request(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def _send(self, code: int, body: bytes, headers: dict | None = None, length: int | None = None):
        """Reply ``code`` with ``body``; ``length`` may promise more bytes than are sent (a truncated reply)."""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def reset_connection(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed server would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        for f in (self.rfile, self.wfile, self.connection):
            f.close()  # the last reference closes the fd: linger 0 sends RST

"""Calls to any OpenAI-compatible endpoint: bounded concurrency, retries, an on-disk cache.

Used by :mod:`sert.teach` (``--teacher openai:MODEL``) and by the evaluation's
optional LLM judge (:func:`judge_score` / :func:`make_judge`: the paper's 0-10
rubric on coherence, relevance, logical consistency and completeness, SERT §III).

- The key comes from the environment variable ``OPENAI_API_KEY`` only. It is
  never logged, cached or written anywhere; error texts are scrubbed of it.
  A local server (vLLM, llama.cpp, ...) given by ``base_url`` needs no key.
- Retries with exponential backoff and jitter on 429 (honouring ``Retry-After``
  / ``retry-after-ms``), 408/409/5xx, connection errors and resets, timeouts,
  and malformed or truncated JSON. Other 4xx fail at once (retrying cannot help).
- Cache: an append-only JSONL (:class:`sert.io.JsonlLog`) keyed by a hash of
  (model, messages or prompt, params). A rerun answers from it and makes no
  call. A request that still fails after the retries is appended as a failure
  record (ignored when the cache is read, so the next run retries it), returned
  as a failed :class:`Reply` and listed in :attr:`LLMClient.failed`; it never
  raises out of the batch.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import SertError
from .io import JsonlLog, read_jsonl
from .log import get as _get_logger
from .models import cache_root

log = _get_logger(__name__)

KEY_ENV = "OPENAI_API_KEY"


@dataclass
class Reply:
    key: str
    ok: bool
    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    logprobs: list | None = None  # per generated token: [[token, logprob], ...] (top_logprobs), if returned


class _Malformed(Exception):
    """A 2xx response whose body is not a usable completion."""


def request_key(model: str, payload: Any, params: dict) -> str:
    """Cache key: sha256 of the canonical JSON of (model, messages or prompt, params)."""
    blob = json.dumps({"model": model, "input": payload, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _retry_after(headers) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms`` or ``Retry-After``: seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class LLMClient:
    """A model behind an OpenAI-compatible endpoint, with retries and a cache.

    ``chat(messages, **params)`` / ``complete(prompt, **params)`` make one request;
    ``chat_many`` / ``complete_many`` run a batch with at most ``concurrency``
    requests in flight, in input order. ``params`` are passed to the endpoint
    (temperature, max_tokens, ...) and are part of the cache key.
    """

    def __init__(self, model: str, base_url: str | None = None, cache_path: str | os.PathLike | None = None,
                 concurrency: int = 8, max_retries: int = 6, timeout: float = 60.0, backoff: float = 1.0,
                 max_backoff: float = 60.0, max_wait: float = 300.0, sleep: Callable[[float], None] = time.sleep):
        import openai

        key = os.environ.get(KEY_ENV)
        if not key:
            if base_url is None:
                raise SertError(f"set {KEY_ENV} to call the OpenAI API, or pass --base-url for a local "
                                "OpenAI-compatible server")
            key = "EMPTY"  # local servers accept any key; the client library needs one
        self._key = key
        self.model = model
        self.concurrency, self.max_retries = max(1, concurrency), max(0, max_retries)
        self.backoff, self.max_backoff, self.max_wait = backoff, max_backoff, max_wait
        self._sleep = sleep
        # the library's own retries are off: ours also cover malformed bodies and honour Retry-After
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self._lock = threading.Lock()
        self._cache: dict[str, dict] = {}
        self._log: JsonlLog | None = None
        if cache_path is not None:
            self._log = JsonlLog(cache_path)  # repairs a torn last line
            for r in read_jsonl(cache_path):
                if r.get("ok") and "key" in r:
                    self._cache[r["key"]] = r
        self.calls = 0          # HTTP attempts made by this object
        self.cache_hits = 0
        self.failed: list[Reply] = []

    # ------------------------------------------------------------- public
    def chat(self, messages: list[dict], **params) -> Reply:
        return self._one("chat", messages, params)

    def chat_many(self, batch: Sequence[list[dict]], **params) -> list[Reply]:
        return self._many("chat", batch, params)

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
        self._client.close()

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------- internals
    def _key_for(self, kind: str, payload, params) -> str:
        return request_key(self.model, {"chat": payload} if kind == "chat" else {"prompt": payload}, params)

    def _many(self, kind: str, payloads: Sequence, params: dict) -> list[Reply]:
        keys = [self._key_for(kind, p, params) for p in payloads]
        todo: dict[str, Any] = {}
        for k, p in zip(keys, payloads):
            todo.setdefault(k, p)  # identical requests in one batch are sent once
        done: dict[str, Reply] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futs = {k: pool.submit(self._one, kind, p, params, k) for k, p in todo.items()}
            for k, f in futs.items():
                done[k] = f.result()
        return [done[k] for k in keys]

    def _one(self, kind: str, payload, params: dict, key: str | None = None) -> Reply:
        key = key or self._key_for(kind, payload, params)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self.cache_hits += 1
                return Reply(key, True, hit.get("text"), hit.get("finish_reason"), cached=True,
                             logprobs=hit.get("logprobs"))
        try:
            reply = self._with_retries(kind, payload, params, key)
        except Exception as e:  # noqa: BLE001 - one bad request must not crash a batch
            reply = Reply(key, False, error=self._scrub(f"{type(e).__name__}: {e}"))
        rec = {"key": key, "ok": reply.ok, "model": self.model, "kind": kind, "attempts": reply.attempts,
               "time": round(time.time(), 3)}
        if reply.ok:
            rec.update(text=reply.text, finish_reason=reply.finish_reason, request={"input": payload, **params})
            if reply.logprobs:
                rec["logprobs"] = reply.logprobs
        else:
            rec["error"] = reply.error
        with self._lock:
            if reply.ok:
                self._cache[key] = rec
            else:
                self.failed.append(reply)
            if self._log:
                self._log.append(rec)
        return reply

    def _with_retries(self, kind: str, payload, params: dict, key: str) -> Reply:
        import openai

        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.calls += 1
            wait = None
            try:
                text, finish, logprobs = self._request(kind, payload, params)
                return Reply(key, True, text, finish, attempts=attempt + 1, logprobs=logprobs)
            except openai.RateLimitError as e:
                last = f"429 rate limited: {e.message}"
                wait = _retry_after(getattr(e.response, "headers", None))
            except openai.APIStatusError as e:
                last = f"HTTP {e.status_code}: {e.message}"
                if not (e.status_code >= 500 or e.status_code in (408, 409)):
                    return Reply(key, False, error=self._scrub(last), attempts=attempt + 1)
                wait = _retry_after(getattr(e.response, "headers", None))
            except openai.APITimeoutError:
                last = "request timed out"
            except openai.APIConnectionError as e:
                last = f"connection error: {e.__cause__ or e}"
            except (_Malformed, openai.APIResponseValidationError, ValueError) as e:
                # json.JSONDecodeError is a ValueError: a malformed or truncated body
                last = f"malformed response: {e}"
            if attempt == self.max_retries:
                break
            cap = min(self.max_backoff, self.backoff * 2 ** attempt)
            jittered = cap / 2 + random.uniform(0, cap / 2)
            self._sleep(min(self.max_wait, wait) * random.uniform(1.0, 1.1) if wait is not None else jittered)
        return Reply(key, False, error=self._scrub(f"failed after {self.max_retries + 1} attempts; last: {last}"),
                     attempts=self.max_retries + 1)

    def _request(self, kind: str, payload, params: dict) -> tuple[str, str | None, list | None]:
        if kind == "chat":
            resp = self._client.chat.completions.create(model=self.model, messages=payload, **params)
        else:
            resp = self._client.completions.create(model=self.model, prompt=payload, **params)
        try:
            choice = resp.choices[0]
            text = choice.message.content if kind == "chat" else choice.text
        except (AttributeError, IndexError, TypeError, KeyError):
            raise _Malformed(f"no completion in the response body ({str(resp)[:120]!r})") from None
        if not isinstance(text, str):
            raise _Malformed("the completion text is missing or not a string")
        return text, getattr(choice, "finish_reason", None), _top_logprobs(choice) if kind == "chat" else None

    def _scrub(self, s: str) -> str:
        s = str(s)
        if self._key and len(self._key) >= 4:
            s = s.replace(self._key, "***")
        return s[:500]


def _top_logprobs(choice) -> list | None:
    """``[[token, logprob], ...]`` per generated token from a chat choice's ``logprobs.content``
    (its ``top_logprobs``, else the sampled token alone); None when the server sent none."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    out = []
    for t in content:
        top = getattr(t, "top_logprobs", None) or [t]
        out.append([[c.token, c.logprob] for c in top if isinstance(getattr(c, "logprob", None), (int, float))])
    return out


# ---------------------------------------------------------------- the judge
JUDGE_PROMPT = """You are grading the reasoning written by a small language model.

Question: {question}

Model response: {output}

Rate the response from 0 to 10 on four criteria taken together:
- coherence: the text is fluent and hangs together;
- relevance: it addresses this question;
- logical consistency: the steps follow from each other and support the final answer;
- completeness: it gives the reasoning needed and reaches an answer.
0 = empty, off-topic or incoherent; 10 = clear, correct-looking and complete reasoning.
Reply with the score on the first line in the form "Score: N" (N from 0 to 10), nothing else."""

_SCORE = [
    re.compile(r"score\s*(?:is|of|:|=)?\s*\**\s*(-?\d+(?:\.\d+)?)", re.I),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.I),
    re.compile(r"^\W*(-?\d+(?:\.\d+)?)\W*$"),
]


def parse_score(text: str | None) -> float | None:
    """A 0-10 score from a judge's reply (``Score: 7``, ``7/10``, ``**8**``, ``7.5``); None if absent or out of range."""
    if not text:
        return None
    for rx in _SCORE:
        m = rx.search(text.strip())
        if m:
            x = float(m.group(1))
            return x if 0 <= x <= 10 else None
    nums = re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", text)
    if len(nums) == 1 and 0 <= float(nums[0]) <= 10:
        return float(nums[0])
    return None


def _judge_messages(question: str, output: str) -> list[dict]:
    return [{"role": "user", "content": JUDGE_PROMPT.format(question=question.strip(), output=output.strip())}]


JUDGE_PARAMS = {"temperature": 0.0, "max_tokens": 16}
LOGPROB_PARAMS = {"logprobs": True, "top_logprobs": 20}  # 20: the OpenAI API's maximum
FORMAT_REMINDER = 'No score found in your reply. Reply with exactly "Score: N", N an integer from 0 to 10.'
SCORE_TOKENS = {str(k): k for k in range(11)}


def logprob_score(logprobs: list | None) -> float | None:
    """The probability-weighted mean score, sum_k p(k) * k over the tokens "0".."10" among the top
    log-probabilities at the first generated token whose most likely candidate is a score
    (p normalised over the score tokens found there); None when no token is a score."""
    for top in logprobs or []:
        if not top or max(top, key=lambda c: c[1])[0].strip() not in SCORE_TOKENS:
            continue
        p: dict[int, float] = {}
        for tok, lp in top:
            k = SCORE_TOKENS.get(tok.strip())
            if k is not None:
                p[k] = p.get(k, 0.0) + math.exp(lp)
        return sum(k * v for k, v in p.items()) / sum(p.values())
    return None


def reply_score(r: Reply) -> float | None:
    """A judge reply's score: from its token log-probabilities where the server returned them,
    else parsed from its text (:func:`parse_score`)."""
    if not r.ok:
        return None
    s = logprob_score(r.logprobs)
    return s if s is not None else parse_score(r.text)


def judge_many(client: LLMClient, items: Sequence[tuple[str, str]], logprobs: bool = False) -> list[dict]:
    """Judge many (question, output) pairs, concurrently: per pair ``{"judge": score or None,
    "judge_status": "scored" | "unscored" | "failed"}``.

    A reply with no readable score is asked once more, with the reply and a format reminder
    appended; still none: ``unscored`` (never averaged in as 0). ``failed``: the request failed
    after its retries (not cached: a rerun asks again).
    """
    params = dict(JUDGE_PARAMS, **(LOGPROB_PARAMS if logprobs else {}))
    msgs = [_judge_messages(q, o) for q, o in items]
    replies = client.chat_many(msgs, **params)
    scores = [reply_score(r) for r in replies]
    again = [i for i, (r, s) in enumerate(zip(replies, scores)) if r.ok and s is None]
    if again:
        retry = client.chat_many([msgs[i] + [{"role": "assistant", "content": replies[i].text or ""},
                                             {"role": "user", "content": FORMAT_REMINDER}] for i in again], **params)
        for i, r in zip(again, retry):
            replies[i], scores[i] = r, reply_score(r)
    return [{"judge": s, "judge_status": "scored" if s is not None else "unscored" if r.ok else "failed"}
            for r, s in zip(replies, scores)]


def judge_scores(client: LLMClient, items: Sequence[tuple[str, str]], logprobs: bool = False) -> list[float | None]:
    """The scores of :func:`judge_many` alone."""
    return [j["judge"] for j in judge_many(client, items, logprobs)]


def judge_score(client: LLMClient, question: str, output: str, logprobs: bool = False) -> float | None:
    """The paper's 0-10 judge score (coherence, relevance, logical consistency,
    completeness) for one model output; None when the call failed or no score was given."""
    return judge_scores(client, [(question, output)], logprobs)[0]


def coverage(records: Sequence[dict]) -> dict:
    """Judge coverage of records that went through a :class:`Judge`: ``judge`` (mean of the scored,
    None if none), ``judge_n`` (scored), ``judge_asked``, ``judge_failed`` (requests that failed)."""
    asked = [r for r in records if "judge" in r]
    scored = [r["judge"] for r in asked if r["judge"] is not None]
    return {"judge": sum(scored) / len(scored) if scored else None, "judge_n": len(scored),
            "judge_asked": len(asked), "judge_failed": sum(r.get("judge_status") == "failed" for r in asked)}


def format_judge(m: dict, digits: int = 2) -> str:
    """``6.20 (12/20 scored)``: the mean beside its coverage; ``– (0/20 scored)`` when none was."""
    mean = "–" if m.get("judge") is None else f"{m['judge']:.{digits}f}"
    asked = m.get("judge_asked")
    return mean if asked is None else f"{mean} ({m.get('judge_n', 0)}/{asked} scored)"


class Judge:
    """``judge(records) -> records`` for :mod:`sert.evaluate`: adds ``judge`` (0-10 or None) and
    ``judge_status`` (:func:`judge_many`) to each record (fields ``question``, ``output``).

    Built by :func:`make_judge`; the cache (default ``$SERT_CACHE/judge/cache.jsonl``) makes
    a re-evaluation free, and failed calls leave ``judge: None`` (retried next time). Token
    log-probabilities are requested (``logprobs``); servers that do not return them are read
    from the text, and one that refuses the parameter (HTTP 400) is asked again without it.
    """

    def __init__(self, model: str, base_url: str | None = None, cache_path: str | os.PathLike | None = None,
                 concurrency: int = 8, max_retries: int = 6, timeout: float = 60.0, logprobs: bool = True):
        if cache_path is None:
            cache_path = cache_root() / "judge" / "cache.jsonl"
        self.opts = dict(base_url=base_url, cache_path=cache_path, concurrency=concurrency,
                         max_retries=max_retries, timeout=timeout)
        self.model, self.logprobs = model, logprobs
        LLMClient(model, **self.opts).close()  # fail now (no key, bad cache file), not after decoding

    def score(self, items: Sequence[tuple[str, str]], what: str = "judge") -> list[dict]:
        """:func:`judge_many` on (question, output) pairs, with a line on failures and coverage."""
        with LLMClient(self.model, **self.opts) as client:
            res = judge_many(client, items, self.logprobs)
            refused = [f for f in client.failed if f.error and f.error.startswith("HTTP 400") and "logprob" in f.error]
            if self.logprobs and refused:
                log.info(f"{what}: the server refuses log-probabilities; scoring from the reply text")
                self.logprobs = False
                client.failed.clear()
                res = judge_many(client, items, False)
            if client.failed:
                log.warning(f"{what}: {len(client.failed)} of {len(items)} requests failed; those have no score "
                            f"(rerun to retry). First error: {client.failed[0].error}")
        log.info(f"{what}: {format_judge(coverage(res))}")
        return res

    def __call__(self, records: Sequence[dict]) -> list[dict]:
        res = self.score([(r["question"], r.get("output") or "") for r in records])
        return [dict(r, **j) for r, j in zip(records, res)]


def make_judge(spec: str, base_url: str | None = None, **kw) -> Judge:
    """The paper's LLM judge from ``eval.judge`` (``openai:MODEL``) and ``eval.judge_base_url``."""
    if not spec.startswith("openai:") or not spec[len("openai:"):].strip():
        raise SertError(f"eval.judge: expected openai:MODEL (any OpenAI-compatible endpoint), got {spec!r}")
    return Judge(spec[len("openai:"):].strip(), base_url, **kw)

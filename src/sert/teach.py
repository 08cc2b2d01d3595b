"""Stage 3 data: teacher chain-of-thought rationales (SERT §II-C).

The paper's teacher is text-davinci-002 with Zero-shot-CoT, i.e. exactly the
Fine-tune-CoT teacher completions (Ho et al. 2023); they ship with the package.

Teachers (``--teacher``):
  text-davinci-002  offline, Fine-tune-CoT files ``D_<task>.json``: rationale =
                    ``reasoning_completion``; answer = ``completion`` read after
                    "Therefore, the answer is"; matched by sample_index == Example.index,
                    completion_index 0 where a sample has several.
  palm-540b         offline, CommonsenseQA only (Distilling step-by-step): ``cqa_train.json``
                    rows aligned by position with ``train_CoT_0..9.json``; matched to our
                    examples by CSQA id; text before the first "Q:" split on "So the answer is".
  openai:MODEL      online, any OpenAI-compatible endpoint (``--base-url``), two calls per
                    question as in Kojima et al. 2022 (see :func:`_online`).
  auto              the task's shipped teacher.

Correctness is decided by the shared extractor (:func:`sert.answers.extract_answer`
on "Therefore/So the answer is" + the teacher's answer text, then ``is_correct``
against our gold). By default only correct rationales are kept (Fine-tune-CoT).

Outputs under ``--out DIR``: ``rationales.jsonl`` (id, question, answer, rationale,
teacher_answer, correct, teacher), ``teach_summary.json`` (total, with rationale,
correct, kept, failed requests) and, for online teachers, ``openai_cache.jsonl``
(so a rerun makes no new calls; failed requests are retried).
"""
from __future__ import annotations

import json
import os
from urllib.parse import urlsplit, urlunsplit
from pathlib import Path

from .answers import extract_answer, is_correct, truncate_continuation
from .config import TeachConfig, check, to_dict
from .errors import SertError, did_you_mean
from .io import RunLock, atomic_write_json, atomic_write_jsonl, read_json
from .tasks import LETTERS, Example, Task, get_task, read_data
from .templates import COT_TRIGGER
from .log import get as _get_logger
from .openai_client import LLMClient

log = _get_logger(__name__)

DAVINCI, PALM = "text-davinci-002", "palm-540b"
TEACHER_ALIASES = {"davinci": DAVINCI, "text-davinci": DAVINCI, "gpt-3.5": DAVINCI, "palm": PALM,
                   "palm540b": PALM, "palm-540": PALM}
CACHE_FILE = "openai_cache.jsonl"


# ------------------------------------------------------------------ offline teachers
def _davinci(rel: str, examples: list[Example]) -> dict[str, dict]:
    """id -> {rationale, answer_text} from a Fine-tune-CoT ``D_<task>.json`` (vendored file ``rel``)."""
    data = json.loads(read_data(rel))["data"]
    out = {}
    for e in examples:
        recs = data.get(str(e.index)) or []
        recs = sorted(recs, key=lambda r: r.get("completion_index", 0))
        if not recs:
            continue
        r = recs[0]  # completion_index 0: the greedy teacher output
        out[e.id] = {"rationale": r.get("reasoning_completion") or "",
                     "answer_text": "Therefore, the answer is" + (r.get("completion") or "")}
    return out


def parse_palm(text: str) -> tuple[str, str | None]:
    """(rationale, answer text) of a PaLM CoT completion: cut where it starts a hallucinated next
    example (:func:`sert.answers.truncate_continuation`: its ``\n\nQ:``), split on "So the answer is"
    (answer text None when the phrase is absent)."""
    body = truncate_continuation(text)
    rationale, sep, ans = body.partition("So the answer is")
    return rationale.strip(), ("So the answer is" + ans.rstrip()) if sep else None


def _palm(folder: str, examples: list[Example]) -> dict[str, dict]:
    """The same from the Distilling step-by-step files in the vendored folder ``folder``."""
    rows = [json.loads(line) for line in read_data(f"{folder}/cqa_train.json").splitlines() if line.strip()]
    cots: list[str] = []
    for i in range(10):
        cots += json.loads(read_data(f"{folder}/train_CoT_{i}.json"))
    if len(cots) != len(rows):
        raise SertError(f"{folder}: {len(rows)} questions but {len(cots)} rationales; the files are not aligned")
    by_id = {r["id"]: c for r, c in zip(rows, cots)}
    out = {}
    for e in examples:
        if e.id not in by_id:
            continue
        rationale, ans = parse_palm(by_id[e.id])
        out[e.id] = {"rationale": rationale,
                     "answer_text": ans if ans is not None else rationale}  # no phrase: read the whole text
    return out


# ------------------------------------------------------------------ online teacher
def answer_trigger(e: Example) -> str:
    """Kojima et al.'s answer-extraction trigger for the example's answer kind."""
    if e.kind == "yesno":
        return "Therefore, the answer (Yes or No) is"
    if e.kind == "choice":
        return f"Therefore, among A through {LETTERS[len(e.choices or 'ABCDE') - 1]}, the answer is"
    if e.kind == "number":
        return "Therefore, the answer (arabic numerals) is"
    return "Therefore, the answer is"


def reasoning_prompt(question: str) -> str:
    """Zero-shot-CoT (Kojima et al. 2022), as the Fine-tune-CoT teacher was prompted."""
    return f"Q: {question}\nA: {COT_TRIGGER}"


def _online(model: str, examples: list[Example], cfg: TeachConfig, out_dir: Path) -> tuple[dict, int]:
    """Two calls per question, as Kojima et al. and the paper's teacher did (our decision, D):

    1. reasoning: ``Q: {q}\\nA: Let's think step by step.`` -> rationale
       (temperature ``cfg.temperature``, ``cfg.max_tokens`` tokens: 0 and 128 as Fine-tune-CoT);
    2. answer: the same text + rationale + the kind's trigger (``Therefore, the answer
       (Yes or No) is``) -> a short answer.
    Two calls keep the rationale free of a model-specific answer format and give
    the answer in one predictable place, like the shipped davinci records; a single
    call would halve the cost but leave the answer wherever the model puts it.
    Both go to the chat endpoint (one user message each), which every
    OpenAI-compatible server offers.
    """
    params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    with LLMClient(model, base_url=cfg.base_url, cache_path=out_dir / CACHE_FILE, concurrency=cfg.concurrency,
                   max_retries=cfg.max_retries, timeout=cfg.timeout) as client:
        first = client.chat_many([[{"role": "user", "content": reasoning_prompt(e.question)}] for e in examples],
                                 **params)
        second_for = [(e, r) for e, r in zip(examples, first) if r.ok]
        second = client.chat_many(
            [[{"role": "system", "content": "Continue the text with the final answer only."},
              {"role": "user", "content": f"{reasoning_prompt(e.question)} {r.text.strip()}\n{answer_trigger(e)}"}]
             for e, r in second_for], temperature=cfg.temperature, max_tokens=32)
        out = {}
        for (e, r1), r2 in zip(second_for, second):
            if r2.ok:
                # read with the plain phrase: the kind-specific trigger itself names "Yes or No"/"A through E"
                out[e.id] = {"rationale": r1.text, "answer_text": "Therefore, the answer is " + r2.text.strip()}
        failed = len(client.failed)
        for f in client.failed[:5]:
            log.warning(f"teach: request failed: {f.error}")
    return out, failed


# ------------------------------------------------------------------ running
def resolve_teacher(task: Task, name: str) -> str:
    """Canonical teacher name for ``task``: a shipped one, ``openai:MODEL``, or ``auto``."""
    if name.startswith("openai:"):
        if not name[len("openai:"):].strip():
            raise SertError("--teacher openai:MODEL needs a model name, e.g. openai:gpt-4o-mini")
        return name
    key = TEACHER_ALIASES.get(name.lower(), name.lower())
    if key == "auto":
        if not task.teachers:
            raise SertError(f"task {task.name} ships no teacher rationales; use --teacher openai:MODEL "
                            "(with --base-url for a local OpenAI-compatible server)")
        return DAVINCI if DAVINCI in task.teachers else next(iter(task.teachers))
    if key not in task.teachers:
        shipped = ", ".join(task.teachers) or "none"
        raise SertError(f"teacher '{name}' is not shipped for task {task.name}{did_you_mean(key, task.teachers)}; "
                        f"shipped: {shipped}; or use openai:MODEL")
    return key


def teacher_rationales(task: Task, teacher: str, examples: list[Example], cfg: TeachConfig,
                       out_dir: Path) -> tuple[dict[str, dict], int]:
    """id -> {rationale, answer_text} for the examples the teacher covers, and failed requests."""
    if teacher.startswith("openai:"):
        return _online(teacher[len("openai:"):], examples, cfg, out_dir)
    rel = task.teachers[teacher]
    return (_palm(rel, examples) if teacher == PALM else _davinci(rel, examples)), 0


def build_records(examples: list[Example], found: dict[str, dict], teacher: str) -> tuple[list[dict], dict]:
    """Judge every rationale with the shared extractor; all records (kept or not) and extraction counts."""
    recs, methods = [], {"strict": 0, "flexible": 0, "none": 0}
    for e in examples:
        t = found.get(e.id)
        if t is None:
            continue
        rationale = " ".join(t["rationale"].split())
        if not rationale:
            continue
        x = extract_answer(t["answer_text"], e.kind, e.choices)
        methods[x.method or "none"] += 1
        recs.append({"id": e.id, "question": e.question, "answer": e.answer, "rationale": rationale,
                     "teacher_answer": x.answer, "correct": is_correct(x.answer, e.answer, e.kind),
                     "teacher": teacher})
    return recs, methods


def run_teach(task: str | Task, cfg: TeachConfig, out_dir: str | os.PathLike, split: str = "train",
              limit: int | None = None) -> Path:
    """Collect teacher rationales for ``task``'s ``split``; return DIR/rationales.jsonl."""
    check(cfg)
    t = get_task(task) if isinstance(task, str) else task
    limit = limit if limit is not None else cfg.limit
    teacher = resolve_teacher(t, cfg.teacher)
    out = Path(out_dir)
    rat, summ = out / "rationales.jsonl", out / "teach_summary.json"
    settings = {"task": t.name, "split": split, "limit": limit, "teacher": teacher,
                "keep_correct_only": cfg.keep_correct_only}
    if teacher.startswith("openai:"):
        settings.update(temperature=cfg.temperature, max_tokens=cfg.max_tokens)
    with RunLock(out):
        if rat.exists() and summ.exists():
            old = read_json(summ)
            if old.get("settings") == settings and old.get("failed_requests", 0) == 0:
                log.info(f"teach: {rat} exists ({old['kept']} kept of {old['total']}); skipped")
                return rat
        examples = t.examples(split, limit)
        found, failed = teacher_rationales(t, teacher, examples, cfg, out)
        recs, methods = build_records(examples, found, teacher)
        if not recs and not failed:
            raise SertError(f"teacher {teacher} has no rationales for {t.name} split '{split}'")
        kept = [r for r in recs if r["correct"] or not cfg.keep_correct_only]
        n_correct = sum(r["correct"] for r in recs)
        atomic_write_jsonl(rat, kept)
        summary = {
            "total": len(examples), "with_rationale": len(recs), "correct": n_correct, "kept": len(kept),
            "failed_requests": failed, "teacher_accuracy": round(n_correct / len(examples), 4),
            "extraction": methods, "settings": settings,
            "note": ("correct = shared extractor (sert.answers) on the teacher's answer text vs our gold; "
                     "teacher_accuracy counts questions without a rationale as wrong"),
            "config": to_dict(cfg) | {"base_url": _safe_url(cfg.base_url)},
        }
        atomic_write_json(summ, summary)
    msg = f"teach: kept {len(kept)} of {len(examples)} ({n_correct} correct, {len(recs)} with a rationale"
    msg += f", {failed} failed requests: rerun to retry them)" if failed else ")"
    log.info(msg)
    return rat


def _safe_url(url: str | None) -> str | None:
    """The endpoint without any user:password part, for the summary."""
    if not url:
        return url
    u = urlsplit(url)
    return urlunsplit(u._replace(netloc=u.hostname + (f":{u.port}" if u.port else ""))) if u.hostname else url

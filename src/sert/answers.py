"""The one answer extractor, shared by filtering, teaching and evaluation.

Whether a mined path, a teacher rationale or a model prediction is correct is
decided by the same two functions: :func:`extract_answer` and :func:`is_correct`. This module
is the only place that reads an output: the answer, where it is (:attr:`Extraction.span`, for
mining's CoT-decoding confidence) and where a hallucinated next example starts
(:data:`NEXT_EXAMPLE`, cut before reading; the Fmt metric and the filters flag it).

Extraction is a named chain, as in lm-evaluation-harness:

1. ``strict``   - the text after the last ``the answer is`` that states a usable answer
   (SERT's target ends ``So the answer is {a}.``; Zero-shot-CoT teachers say ``Therefore,
   the answer is``; a model may say "the answer is" earlier, e.g. "The answer is usually no.
   ... So the answer is no.", and its final statement counts).
2. ``flexible`` - a fallback for outputs without that phrase: the leading yes/no,
   an option letter or option text, or the last number.
3. ``None``     - nothing usable (counted wrong, and a format error).

Normalised answers by kind:
``yesno`` -> ``"yes"``/``"no"``; ``choice`` -> an upper-case letter ``"A"``..;
``number`` -> a canonical number string (``"1234"``, ``"2.5"``); ``text`` -> lower-case words.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

KINDS = ("yesno", "choice", "number", "text")

NEXT_QUESTION = "Question:"
"""The marker that opens an example in every prompt (:mod:`sert.templates`): a small model that
writes it after its answer has started a hallucinated next example. Evaluation stops generating
at this literal (``sert.templates.STOP_STRINGS``); :data:`NEXT_EXAMPLE` is where such a new
example starts in an output."""

_Q = re.escape(NEXT_QUESTION.rstrip(":"))  # "Question"
NEXT_EXAMPLE = re.compile(
    rf"\n\s*(?:{_Q}|Q)\s*:"        # "Question:" or "Q:" opening a line (cut at the newline)
    rf"|(?<=[.!?\s]){_Q}\s*:"       # "Question:" after a space or a sentence end
    rf"|^(?:{_Q}|Q)\s*:"             # "Question:" or "Q:" opening the text
    r"|(?<=[.!?])[^\S\n]*Q\s*:")   # "Q:" after a sentence end on the same line
"""Where an output starts a hallucinated next example: the one definition of "a hallucinated
next ``Question:``". :func:`truncate_continuation` cuts an output at its first match before the
answer is read (extraction, evaluation's reasoning length and repetition), :func:`has_continuation`
(the Fmt metric's ``continuation`` issue) is true exactly when there is a match, and the filters'
``prompt_imitation`` rule rejects a mined path with a match (and other prompt markers).
Case-sensitive; a bare ``Q:`` mid-sentence ("the Q: ...") is not a new example."""

_ANSWER_IS = re.compile(r"the answer is\s*:?\s*", re.IGNORECASE)
_TURN_MARKER = re.compile(r"^[^\S\n]*A:[^\S\n]*$", re.MULTILINE)
"""A line that is only ``A:``: an untrained model continuing a Q:/A: dialogue opens the next answer
turn with it ("' A\nA:'", "'\nA:'"); it names no option, so the flexible choice reader skips it."""
_YES = {"yes", "true", "correct"}
_NO = {"no", "false", "incorrect"}
_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Extraction:
    """What :func:`extract_answer` reads from an output."""
    answer: str | None
    method: str | None  # "strict", "flexible" or None
    # Where the answer is: ``text[span[0]:span[1]]`` states it (whitespace-trimmed); None without an
    # answer. Mining's CoT-decoding confidence averages the margins of the tokens in this span.
    span: tuple[int, int] | None = None


def truncate_continuation(text: str) -> str:
    """Cut a generation where it starts a hallucinated next example (:data:`NEXT_EXAMPLE`)."""
    m = NEXT_EXAMPLE.search(text)
    return text[: m.start()] if m else text


def has_continuation(text: str) -> bool:
    """True if the output starts a hallucinated next example (:data:`NEXT_EXAMPLE`), i.e. exactly
    when :func:`truncate_continuation` cuts it: a format issue."""
    return NEXT_EXAMPLE.search(text) is not None


def normalize_number(s: str) -> str | None:
    s = s.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        x = float(s)
    except ValueError:
        return None
    if math.isnan(x) or math.isinf(x):
        return None
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    return f"{x:.6f}".rstrip("0").rstrip(".")


def normalize_answer(raw: str, kind: str, choices: Sequence[str] | None = None) -> str | None:
    """Normalise an answer string (gold or extracted) of the given kind; None if unusable."""
    if raw is None:
        return None
    s = str(raw).strip()
    if kind == "yesno":
        m = re.match(r"\W*([A-Za-z]+)", s)
        if not m:
            return None
        w = m.group(1).lower()
        return "yes" if w in _YES else "no" if w in _NO else None
    if kind == "choice":
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices or ()) or 26]
        named = {x.upper() for x in re.findall(r"\(([A-Za-z])\)", s) if x.upper() in letters}
        if len(named) > 1:
            return None  # a hedge such as "either (a) aquarium or (e) pond" is no answer
        m = re.match(r"\s*\(([A-Za-z])\)", s) or re.match(r"\s*([A-Za-z])\s*(?:[).:,]|$)", s)
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
        i = _match_option(s, choices) if choices else None
        return letters[i] if i is not None else None
    if kind == "number":
        m = _NUMBER.search(s)
        return normalize_number(m.group(0)) if m else None
    if kind == "text":
        t = re.sub(r"[^\w\s]", " ", s.lower())
        t = " ".join(t.split())
        return t or None
    raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")


def _match_option(s: str, choices: Sequence[str]) -> int | None:
    """Index of the option whose text the answer names (longest match wins)."""
    low = " " + " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split()) + " "
    best, best_len = None, 0
    for i, c in enumerate(choices):
        ct = " ".join(re.sub(r"[^\w\s]", " ", c.lower()).split())
        if ct and f" {ct} " in low and len(ct) > best_len:
            best, best_len = i, len(ct)
    return best


def _first_sentence(s: str) -> str:
    s = s.strip()
    m = re.search(r"[.\n]", s)
    return s[: m.start()] if m else s


def extract_answer(text: str, kind: str, choices: Sequence[str] | None = None) -> Extraction:
    """Extract and normalise the answer of a generated ``text`` (see module doc), and where it is.

    The span (:attr:`Extraction.span`) is found where the answer was read: after the same
    ``the answer is`` up to the end of that sentence (strict), else the first yes/no word, option,
    or the last number that normalises to the extracted answer (flexible).
    """
    if not text:
        return Extraction(None, None)
    body = truncate_continuation(text)
    # The last "the answer is" that states a usable answer wins: outputs such as "The answer is
    # usually no. ... So the answer is no." or "The answer is: B: no So the answer is yes." end
    # with the template phrase, and its answer is the final one.
    for m in reversed(list(_ANSWER_IS.finditer(body))):
        tail = _first_sentence(body[m.end():]) if kind != "number" else body[m.end():].split("\n")[0]
        ans = normalize_answer(tail, kind, choices)
        if ans is not None:
            stop = re.search(r"\n" if kind == "number" else r"[.\n]", body[m.end():])
            end = m.end() + stop.start() if stop else len(body)
            span = _locate(body, m.end(), end, kind, ans, choices, last=False) or (m.end(), end)
            return Extraction(ans, "strict", _trim(text, span))
        if kind == "choice" and len(set(re.findall(r"\(([A-Za-z])\)", tail.upper()))) > 1:
            return Extraction(None, None)  # a stated hedge: no fallback guess
    ans = _flexible(body, kind, choices)
    if ans is None:
        return Extraction(None, None)
    return Extraction(ans, "flexible", _trim(text, _locate(body, 0, len(body), kind, ans, choices, last=True)))


def _flexible(body: str, kind: str, choices: Sequence[str] | None) -> str | None:
    s = body.strip()
    if not s:
        return None
    if kind == "yesno":
        first = normalize_answer(s, "yesno")
        if first is not None:
            return first
        words = re.findall(r"[A-Za-z]+", s.lower())
        for w in words:
            if w in ("yes", "no"):
                return w
        return None
    if kind == "choice":
        s = _TURN_MARKER.sub("", s).strip()
        if not s:
            return None
        m = re.search(r"\(([A-Za-z])\)", s)
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices or ()) or 26]
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
        return normalize_answer(_first_sentence(s), "choice", choices) or (
            normalize_answer(s, "choice", choices) if choices else None)
    if kind == "number":
        nums = _NUMBER.findall(s)
        return normalize_number(nums[-1]) if nums else None
    if kind == "text":
        return normalize_answer(_first_sentence(s), "text")
    raise ValueError(f"unknown answer kind {kind!r}")


def is_correct(pred: str | None, gold: str, kind: str) -> bool:
    """Compare a normalised prediction with a normalised gold answer."""
    if pred is None or gold is None:
        return False
    if kind == "number":
        try:
            return abs(float(pred) - float(gold)) < 1e-6 * max(1.0, abs(float(gold)))
        except ValueError:
            return False
    return pred == gold


# ---------------------------------------------------------------- where the answer is (Extraction.span)
_YESNO_WORD = re.compile(r"\b(yes|no|true|false|correct|incorrect)\b", re.IGNORECASE)


def _trim(text: str, span: tuple[int, int] | None) -> tuple[int, int] | None:
    """``span`` without leading and trailing whitespace; None if nothing is left."""
    if span is None:
        return None
    a, b = span
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return (a, b) if b > a else None


def _locate(body, a, b, kind, ans, choices, last) -> tuple[int, int] | None:
    """Span of ``ans`` inside ``body[a:b]``: yes/no word, number (last or first), option, or first sentence."""
    seg = body[a:b]
    if kind == "yesno":
        for w in _YESNO_WORD.finditer(seg):
            if normalize_answer(w.group(1), "yesno") == ans:
                return a + w.start(1), a + w.end(1)
        return None
    if kind == "number":
        nums = list(_NUMBER.finditer(seg))
        for n in (reversed(nums) if last else nums):
            if normalize_number(n.group(0)) == ans:
                return a + n.start(), a + n.end()
        return None
    if kind == "choice":
        m2 = re.search(rf"\(\s*{ans}\s*\)|\b{ans}\s*[).:,]|\b{ans}\b", seg)
        if m2:
            return a + m2.start(), a + m2.end()
        i = ord(ans) - ord("A")
        if choices and i < len(choices):
            j = seg.lower().find(choices[i].lower())
            if j >= 0:
                return a + j, a + j + len(choices[i])
        return None
    s = seg.lstrip()  # text: the first sentence
    start = a + len(seg) - len(s)
    stop = re.search(r"[.\n]", s)
    return start, start + (stop.start() if stop else len(s))


# ---------------------------------------------------------------- does the final answer follow from the text?
_LETTER_MARK = re.compile(r"\(([A-Za-z])\)")


def last_named_option(text: str, choices: Sequence[str] | None) -> str | None:
    """The letter of the option ``text`` names last: an option's text (whole words, any case) or a marker
    ``(C)``; at the same end, the longer mention. None if it names none."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices or ()) or 26]
    best: tuple[int, int, str] | None = None
    for m in _LETTER_MARK.finditer(text):
        if m.group(1).upper() in letters:
            cand = (m.end(), m.end() - m.start(), m.group(1).upper())
            best = cand if best is None or cand[:2] > best[:2] else best
    low = text.lower()
    for i, c in enumerate(choices or ()):
        words = " ".join(re.sub(r"[^\w\s]", " ", c.lower()).split())
        if not words:
            continue
        pat = r"(?<!\w)" + r"[^\w]+".join(map(re.escape, words.split())) + r"(?!\w)"
        for m in re.finditer(pat, low):
            cand = (m.end(), m.end() - m.start(), letters[i])
            best = cand if best is None or cand[:2] > best[:2] else best
    return best[2] if best else None


def answer_consistent(text: str, kind: str, choices: Sequence[str] | None = None) -> bool | None:
    """Does an output's final answer follow from its own text? None when there is nothing to check.

    The final answer is the strict one (:func:`extract_answer`: the last ``the answer is`` that states a
    usable answer); without one, None. False when an earlier ``the answer is`` states another answer.
    Multiple choice, besides: the final letter must be the option the reasoning names last (its text or
    ``(X)``); a reasoning that names no option gives None. Other kinds: True when nothing contradicts.
    A self-training target that appends the gold letter to a path naming another option teaches exactly
    the inconsistency this measures."""
    if not text:
        return None
    body = truncate_continuation(text)
    stated = []  # (start of the statement, its answer) for every "the answer is" that states one
    for m in _ANSWER_IS.finditer(body):
        tail = _first_sentence(body[m.end():]) if kind != "number" else body[m.end():].split("\n")[0]
        a = normalize_answer(tail, kind, choices)
        if a is not None:
            stated.append((m.start(), a))
    if not stated:
        return None
    start, final = stated[-1]
    if any(not is_correct(a, final, kind) for _, a in stated[:-1]):
        return False
    if kind == "choice":
        named = last_named_option(body[:start], choices)
        return None if named is None else named == final
    return True

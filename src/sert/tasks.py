"""Task registry: real benchmark data with the Fine-tune-CoT train/test splits.

Each task yields :class:`Example` records that know their question text (with
options for multiple choice), their normalised gold answer and their answer
kind, which selects the shared extractor in :mod:`sert.answers`.

Data are vendored under ``sert/data`` (origins and licences in
``sert/data/SOURCES.md``), each file xz-compressed (``NAME.xz``) and read through
:func:`data_file` / :func:`read_data`, which take a file by its original name. A user's own data set loads from JSONL, CSV, or with
Hugging Face ``datasets`` from a ``.parquet``/``.arrow`` file or a ``save_to_disk``
directory (a ``DatasetDict``'s train/test keys give the split; errors name the row), with
the schema ``question``, ``answer``, optional ``choices`` (list, or ``|``-separated
in CSV), optional ``id``, optional ``split`` (``train``/``test``; a row without one is in
both splits); pass its path as the task name.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .answers import normalize_answer
from .errors import SertError, did_you_mean
from .io import COMPRESSED, read_text, reads_utf8

DATA = Path(__file__).parent / "data"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def data_file(rel: str) -> Path:
    """Where the vendored file ``rel`` (its original name under ``sert/data``) is stored: the file
    itself, or compressed beside it as ``rel.xz`` (or ``rel.gz``)."""
    p = DATA / rel
    if p.is_file():
        return p
    for ext in COMPRESSED:
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    raise SertError(f"vendored data file {rel} is missing: neither {p} nor {p.name}.xz exists "
                    "(a damaged install? reinstall sert)")


def read_data(rel: str) -> str:
    """The text of the vendored file ``rel``, decompressed (see :func:`data_file`)."""
    return read_text(data_file(rel))


@dataclass
class Example:
    id: str
    question: str           # the text that goes into the templates
    answer: str             # normalised gold answer (see sert.answers)
    kind: str               # yesno | choice | number | text
    choices: list[str] | None = None
    index: int | None = None  # position in the source file (Fine-tune-CoT sample_index)
    # "file.jsonl:12" for a user file's row, for messages only: not compared, not shown
    source: str | None = field(default=None, compare=False, repr=False)


@dataclass
class Task:
    name: str
    kind: str
    load_all: Callable[[], dict[int, Example]]   # sample_index -> Example
    split_file: str | None                       # Fine-tune-CoT split file under data/
    teachers: dict[str, str] = field(default_factory=dict)  # teacher name -> file under data/
    description: str = ""
    split_index: dict[str, list[int]] | None = None  # user data with a 'split' column: split -> keys

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise SertError(f"unknown split '{split}' for task {self.name}; expected train or test")
        allx = self.load_all()
        if self.split_index is not None:
            idx = self.split_index[split]
        elif self.split_file:
            idx = json.loads(read_data(self.split_file))[split]
        else:
            idx = sorted(allx)
        out = [allx[i] for i in idx if i in allx]
        if limit is not None:
            if limit <= 0:
                raise SertError(f"--limit must be a positive integer, got {limit}")
            out = out[:limit]
        if not out:
            hint = f" (no row of the file has split '{split}')" if self.split_index is not None else ""
            raise SertError(f"task {self.name}: split '{split}' is empty{hint}")
        return out


def _multiple_choice_text(stem: str, choices: list[str]) -> str:
    opts = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{stem.strip()} Answer Choices: {opts}"


# ---------------------------------------------------------------- loaders
@lru_cache(maxsize=None)
def _strategyqa() -> dict[int, Example]:
    ex = json.loads(read_data("strategyqa/task.json"))["examples"]
    out = {}
    for i, e in enumerate(ex):
        gold = "yes" if e["target_scores"].get("Yes") == 1 else "no"
        out[i] = Example(f"strategyqa-{i}", e["input"].strip(), gold, "yesno", None, i)
    return out


@lru_cache(maxsize=None)
def _commonsense_qa() -> dict[int, Example]:
    out = {}
    rows = []
    for fn in ("train_rand_split.jsonl", "dev_rand_split.jsonl"):
        rows += [json.loads(line) for line in read_data(f"commonsense_qa/{fn}").split("\n") if line.strip()]
    for i, r in enumerate(rows):
        choices = [c["text"] for c in sorted(r["question"]["choices"], key=lambda c: c["label"])]
        q = _multiple_choice_text(r["question"]["stem"], choices)
        out[i] = Example(r["id"], q, r["answerKey"].strip().upper(), "choice", choices, i)
    return out


@lru_cache(maxsize=None)
def _gsm8k() -> dict[int, Example]:
    rows = []
    for fn in ("train.jsonl", "test.jsonl"):
        rows += [json.loads(line) for line in read_data(f"gsm8k/{fn}").split("\n") if line.strip()]
    return {i: Example(f"gsm8k-{i}", r["question"].strip(),
                       normalize_answer(r["answer"].split("####")[-1], "number"), "number", None, i)
            for i, r in enumerate(rows)}


def _number_task(name: str, fn: str, q: Callable[[dict], str], a: Callable[[dict], object]):
    @lru_cache(maxsize=None)
    def load() -> dict[int, Example]:
        d = json.loads(read_data(f"{name}/{fn}"))
        rows = d["examples"] if isinstance(d, dict) else d
        return {i: Example(f"{name}-{i}", " ".join(q(r).split()), normalize_answer(str(a(r)), "number"),
                           "number", None, i) for i, r in enumerate(rows)}
    return load


def _plain_task(name: str, fn: str, kind: str):
    @lru_cache(maxsize=None)
    def load() -> dict[int, Example]:
        rows = json.loads(read_data(f"{name}/{fn}"))["examples"]
        return {i: Example(f"{name}-{i}", r["question"].strip(), normalize_answer(r["answer"], kind), kind, None, i)
                for i, r in enumerate(rows)}
    return load


_CHOICE_RE = re.compile(r"\(([A-Z])\)\s*(.*?)(?=,\s*\([A-Z]\)|\.?\s*$)", re.S)


def _choices_from_teacher(name: str, fn: str):
    """Date Understanding / Shuffled Objects: Kojima shuffled the options once; the
    teacher file keeps that exact order (``Answer choices: (A) .., (B) ..``), so
    question, options and gold letter are read from it."""
    @lru_cache(maxsize=None)
    def load() -> dict[int, Example]:
        data = json.loads(read_data(f"{name}/{fn}"))["data"]
        out = {}
        for k, recs in data.items():
            r = recs[0]
            stem, _, opts = r["question"].partition("Answer choices:")
            choices = [m.group(2).strip().rstrip(".") for m in _CHOICE_RE.finditer(opts)]
            i = int(k)
            out[i] = Example(f"{name}-{i}", _multiple_choice_text(stem.replace("Which choice is true?", "").strip(),
                                                                  choices),
                             r["answer"].strip().upper(), "choice", choices, i)
        return out
    return load


TD = "text-davinci-002"
TASKS: dict[str, Task] = {
    "strategyqa": Task("strategyqa", "yesno", _strategyqa, "strategyqa/strategy_qa__default.json",
                       {TD: "strategyqa/D_strategy_qa.json"}, "StrategyQA (Geva et al. 2021), yes/no"),
    "commonsense_qa": Task("commonsense_qa", "choice", _commonsense_qa, "commonsense_qa/commonsense_qa__default.json",
                           {"palm-540b": "commonsense_qa/palm"}, "CommonsenseQA v1.11, 5-way; test = official dev"),
    "gsm8k": Task("gsm8k", "number", _gsm8k, "gsm8k/gsm8k__default.json", {}, "GSM8K grade-school math"),
    "svamp": Task("svamp", "number", _number_task("svamp", "SVAMP.json", lambda r: f"{r['Body']} {r['Question']}",
                                                  lambda r: r["Answer"]),
                  "svamp/svamp__default.json", {TD: "svamp/D_svamp.json"}, "SVAMP arithmetic"),
    "multiarith": Task("multiarith", "number", _number_task("multiarith", "MultiArith.json", lambda r: r["sQuestion"],
                                                            lambda r: r["lSolutions"][0]),
                       "multiarith/multiarith__default.json", {TD: "multiarith/D_multiarith.json"}, "MultiArith"),
    "addsub": Task("addsub", "number", _number_task("addsub", "AddSub.json", lambda r: r["sQuestion"],
                                                    lambda r: r["lSolutions"][0]),
                   "addsub/addsub__default.json", {TD: "addsub/D_addsub.json"}, "AddSub"),
    "single_eq": Task("single_eq", "number", _number_task("single_eq", "questions.json", lambda r: r["sQuestion"],
                                                          lambda r: r["lSolutions"][0]),
                      "single_eq/single_eq__default.json", {TD: "single_eq/D_single_eq.json"}, "SingleEq"),
    "coin_flip": Task("coin_flip", "yesno", _plain_task("coin_flip", "coin_flip.json", "yesno"),
                      "coin_flip/coin_flip__default.json", {TD: "coin_flip/D_coin_flip.json"}, "Coin Flip"),
    "last_letter_concatenation": Task(
        "last_letter_concatenation", "text", _plain_task("last_letter_concatenation", "last_letters.json", "text"),
        "last_letter_concatenation/last_letter_concatenation__default.json",
        {TD: "last_letter_concatenation/D_last_letter_concatenation.json"}, "Last Letter Concatenation"),
    "date_understanding": Task(
        "date_understanding", "choice", _choices_from_teacher("date_understanding", "D_date_understanding.json"),
        "date_understanding/date_understanding__default.json",
        {TD: "date_understanding/D_date_understanding.json"}, "Date Understanding (BIG-bench)"),
    "tracking_shuffled_objects": Task(
        "tracking_shuffled_objects", "choice",
        _choices_from_teacher("tracking_shuffled_objects", "D_tracking_shuffled_objects.json"),
        "tracking_shuffled_objects/tracking_shuffled_objects__default.json",
        {TD: "tracking_shuffled_objects/D_tracking_shuffled_objects.json"}, "Tracking Shuffled Objects (3)"),
}
ALIASES = {"sqa": "strategyqa", "strategy_qa": "strategyqa", "csqa": "commonsense_qa", "cqa": "commonsense_qa",
           "commonsenseqa": "commonsense_qa", "last_letter": "last_letter_concatenation"}


def get_task(name: str) -> Task:
    """A registered task by name (or alias), or a user data file (``.jsonl``/``.csv``)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in TASKS:
        return TASKS[key]
    p = Path(name)
    if p.suffix.lower() in (".jsonl", ".csv", ".json", *HF_SUFFIXES) or p.is_dir():
        return user_task(p)
    raise SertError(f"unknown task '{name}'{did_you_mean(key, TASKS)}; known: {', '.join(TASKS)}, "
                    "or a path to a .jsonl/.csv/.parquet/.arrow file or a dataset directory (save_to_disk)")


def load_examples(task: str, split: str = "test", limit: int | None = None) -> list[Example]:
    return get_task(task).examples(split, limit)


# ------------------------------------------------------------- user data
HF_SUFFIXES = (".parquet", ".arrow")


def _hf_rows(path: Path) -> list[tuple[int, dict]]:
    """(row number, row) of a Hugging Face dataset: a ``.parquet``/``.arrow`` file or a directory written
    by ``save_to_disk``; a ``DatasetDict``'s ``train``/``test`` keys become the rows' ``split``."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path), keep_in_memory=True)
        elif path.suffix.lower() == ".parquet":
            ds = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
        else:
            ds = datasets.Dataset.from_file(str(path), in_memory=True)
    except Exception as e:  # noqa: BLE001 - the library raises many kinds; the user needs one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise SertError(f"{path}: not a readable Hugging Face dataset ({type(e).__name__}: {first})") from None
    parts = list(ds.items()) if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    bad = [k for k, _ in parts if k not in (None, "train", "test")]
    if bad:
        raise SertError(f"{path}: dataset splits must be train and/or test, got {', '.join(map(repr, bad))}")
    rows: list[tuple[int, dict]] = []
    for split, d in parts:
        for r in d:
            r = {k: v for k, v in r.items() if v is not None}  # a null optional column is an absent field
            if split:
                r.setdefault("split", split)
            rows.append((len(rows) + 1, r))
    return rows


@reads_utf8("path")
def _user_rows(path: Path) -> list[tuple[int, dict]]:
    if not path.exists():
        raise SertError(f"{path}: file not found")
    if path.is_dir() or path.suffix.lower() in HF_SUFFIXES:
        return _hf_rows(path)
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "question" not in reader.fieldnames or "answer" not in reader.fieldnames:
                raise SertError(f"{path}:1: CSV header must name 'question' and 'answer' columns, "
                                f"got {reader.fieldnames}")
            for r in reader:
                r = dict(r)
                if r.get("choices"):
                    r["choices"] = [c.strip() for c in r["choices"].split("|")]
                else:
                    r.pop("choices", None)
                rows.append((reader.line_num, r))
        return rows
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SertError(f"{path}:{n}: malformed JSON line ({e.msg})") from None
            if not isinstance(obj, dict):
                raise SertError(f"{path}:{n}: expected a JSON object with 'question' and 'answer'")
            rows.append((n, obj))
    return rows


def _infer_kind(answers: list[str], has_choices: bool) -> str:
    if has_choices:
        return "choice"
    low = {a.strip().lower().rstrip(".") for a in answers}
    if low <= {"yes", "no", "true", "false"}:
        return "yesno"
    if all(normalize_answer(a, "number") is not None and re.fullmatch(r"[\s$\-\d.,]+", a) for a in answers):
        return "number"
    return "text"


def read_user_examples(path: str | Path) -> list[Example]:
    """Load a user's JSONL/CSV data set (schema in the module doc), validating every row."""
    return _read_user(Path(path))[0]


def _read_user(path: Path) -> tuple[list[Example], list[str | None]]:
    """The examples of a user file and each row's ``split`` (None: the row is in both)."""
    rows = _user_rows(path)
    if not rows:
        raise SertError(f"{path}: no examples")
    for n, r in rows:
        for key in ("question", "answer"):
            if key not in r:
                raise SertError(f"{path}:{n}: missing field '{key}' (expected question, answer, optional choices, id)")
            if not isinstance(r[key], (str, int, float)) or isinstance(r[key], bool) or str(r[key]).strip() == "":
                raise SertError(f"{path}:{n}: field '{key}' must be a non-empty string")
        if "choices" in r and (not isinstance(r["choices"], list) or len(r["choices"]) < 2
                               or not all(isinstance(c, str) for c in r["choices"])):
            raise SertError(f"{path}:{n}: field 'choices' must be a list of at least 2 strings")
        if r.get("split") not in (None, "", "train", "test"):
            raise SertError(f"{path}:{n}: field 'split' must be train or test, got {r['split']!r}")
    has_choices = any("choices" in r for _, r in rows)
    if has_choices and not all("choices" in r for _, r in rows):
        n = next(n for n, r in rows if "choices" not in r)
        raise SertError(f"{path}:{n}: missing 'choices' (other rows have them; all or none must)")
    kind = _infer_kind([str(r["answer"]) for _, r in rows], has_choices)
    out = []
    seen = set()
    for i, (n, r) in enumerate(rows):
        choices = r.get("choices")
        gold = normalize_answer(str(r["answer"]), kind, choices)
        if kind == "choice":
            # the answer may be the letter or the option text itself
            if str(r["answer"]).strip() in choices:
                gold = LETTERS[choices.index(str(r["answer"]).strip())]
            elif gold is None:
                raise SertError(f"{path}:{n}: answer {r['answer']!r} matches none of the choices {choices}")
        if gold is None:
            raise SertError(f"{path}:{n}: cannot read answer {r['answer']!r} as {kind}")
        ex_id = str(r.get("id", f"{path.stem}-{i}"))
        if ex_id in seen:
            raise SertError(f"{path}:{n}: duplicate id {ex_id!r}")
        seen.add(ex_id)
        q = str(r["question"]).strip()
        out.append(Example(ex_id, _multiple_choice_text(q, choices) if choices else q, gold, kind, choices, i,
                           source=f"{path}:{n}"))
    return out, [r.get("split") or None for _, r in rows]


def user_task(path: Path) -> Task:
    """A user file as a task. Its ``split`` column, if any, selects rows; without one
    every row is in both splits (pass separate files for train and test)."""
    exs, splits = _read_user(path)
    index = None
    if any(splits):
        index = {sp: [i for i, x in enumerate(splits) if x in (None, sp)] for sp in ("train", "test")}
    return Task(str(path), exs[0].kind, lambda: {i: e for i, e in enumerate(exs)}, None, {}, f"user data {path}",
                index)

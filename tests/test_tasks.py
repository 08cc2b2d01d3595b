import pytest

from sert.errors import SertError
from sert.tasks import TASKS, get_task, load_examples, read_user_examples


@pytest.mark.parametrize("name,train,test", [
    ("strategyqa", 1603, 687), ("commonsense_qa", 9741, 1221), ("gsm8k", 7473, 1319), ("svamp", 700, 300),
])
def test_fine_tune_cot_split_sizes(name, train, test):
    assert len(load_examples(name, "train")) == train
    assert len(load_examples(name, "test")) == test
    ids = [e.id for e in load_examples(name, "train")] + [e.id for e in load_examples(name, "test")]
    assert len(set(ids)) == train + test  # disjoint


def test_every_task_has_normalised_gold():
    for name, t in TASKS.items():
        for e in t.examples("test")[:50]:
            assert e.answer is not None, (name, e.id)
            if e.kind == "choice":
                assert e.choices and e.answer in "ABCDEFG"[: len(e.choices)]
                assert "(A)" in e.question


def test_csqa_question_has_five_options():
    e = load_examples("commonsense_qa", "test", 1)[0]
    assert e.question.startswith("A revolving door is convenient")
    assert e.question.endswith("(E) new york") and e.answer == "A"


def test_unknown_task_suggests():
    with pytest.raises(SertError, match="did you mean 'strategyqa'"):
        get_task("strategyq")


def test_user_jsonl_and_csv(tmp_path):
    j = tmp_path / "mine.jsonl"
    j.write_text('{"question": "Is ice cold?", "answer": "Yes"}\n{"question": "Is fire cold?", "answer": "no", "id": "f"}\n')
    exs = read_user_examples(j)
    assert [(e.id, e.answer, e.kind) for e in exs] == [("mine-0", "yes", "yesno"), ("f", "no", "yesno")]
    c = tmp_path / "mc.csv"
    c.write_text("question,answer,choices\nWhere is money kept?,bank,park|bank|zoo\nWhat barks?,A,dog|cat\n")
    exs = load_examples(str(c), "test")
    assert [e.answer for e in exs] == ["B", "A"] and exs[0].kind == "choice"
    assert exs[0].question.endswith("(A) park (B) bank (C) zoo")


@pytest.mark.parametrize("content,msg", [
    ('{"question": "q"}\n', r"bad.jsonl:1: missing field 'answer'"),
    ('{"question": "q", "answer": "yes"}\n{oops\n', r"bad.jsonl:2: malformed JSON"),
    ('{"question": "q", "answer": ""}\n', r"bad.jsonl:1: field 'answer' must be a non-empty string"),
    ('{"question": "q", "answer": "x", "choices": ["a", "b"]}\n', r"bad.jsonl:1: answer 'x' matches none"),
    ('{"question": "q", "answer": "a", "choices": "a|b"}\n', r"bad.jsonl:1: field 'choices' must be a list"),
    ('[1, 2]\n', r"bad.jsonl:1: expected a JSON object"),
    ('', r"bad.jsonl: no examples"),
])
def test_user_file_errors_name_file_and_line(tmp_path, content, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(SertError, match=msg):
        read_user_examples(p)


def test_bad_limit_and_split():
    with pytest.raises(SertError, match="--limit must be a positive integer"):
        load_examples("strategyqa", "test", 0)
    with pytest.raises(SertError, match="unknown split 'dev'"):
        load_examples("strategyqa", "dev")


def test_user_rows_know_their_file_and_line_for_messages_only(tmp_path):
    import dataclasses

    j = tmp_path / "d.jsonl"
    j.write_text('{"question": "Is it?", "answer": "yes"}\n\n{"question": "Is it not?", "answer": "no"}\n')
    c = tmp_path / "d.csv"
    c.write_text('question,answer\n"Is it?",yes\n"Is it not?",no\n')
    assert [e.source for e in read_user_examples(j)] == [f"{j}:1", f"{j}:3"]
    assert [e.source for e in read_user_examples(c)] == [f"{c}:2", f"{c}:3"]
    e = read_user_examples(j)[0]
    assert e == dataclasses.replace(e, source=None) and "source" not in repr(e)
    assert load_examples("strategyqa", "train", 1)[0].source is None


def test_hugging_face_datasets_as_tasks(tmp_path):
    """A save_to_disk DatasetDict (its train/test keys are the splits) and a parquet file load like JSONL."""
    from datasets import Dataset, DatasetDict

    rows = {"question": ["Where is money kept?", "What barks?", "What meows?"], "answer": ["bank", "A", "cat"],
            "choices": [["park", "bank", "zoo"], ["dog", "cat"], ["dog", "cat"]], "id": ["m", "b", "c"]}
    dd = DatasetDict({"train": Dataset.from_dict({k: v[:2] for k, v in rows.items()}),
                      "test": Dataset.from_dict({k: v[2:] for k, v in rows.items()})})
    dd.save_to_disk(str(tmp_path / "dd"))
    t = get_task(str(tmp_path / "dd"))
    assert [(e.id, e.answer) for e in t.examples("train")] == [("m", "B"), ("b", "A")]
    assert [(e.id, e.answer, e.kind) for e in t.examples("test")] == [("c", "B", "choice")]
    Dataset.from_dict({"question": ["Is ice cold?", "Is fire cold?"], "answer": ["Yes", "no"]}).to_parquet(
        str(tmp_path / "yn.parquet"))
    pj = tmp_path / "yn.jsonl"
    pj.write_text('{"question": "Is ice cold?", "answer": "Yes"}\n{"question": "Is fire cold?", "answer": "no"}\n')
    got = load_examples(str(tmp_path / "yn.parquet"), "test")
    assert [(e.question, e.answer, e.kind) for e in got] == [(e.question, e.answer, e.kind)
                                                             for e in load_examples(str(pj), "test")]


def test_hugging_face_dataset_errors_are_one_line(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"question": ["q1", "q2"], "label": [0, 1]}).to_parquet(str(tmp_path / "nolabel.parquet"))
    with pytest.raises(SertError, match=r"nolabel.parquet:1: missing field 'answer'"):
        load_examples(str(tmp_path / "nolabel.parquet"))
    DatasetDict({"validation": Dataset.from_dict({"question": ["q"], "answer": ["yes"]})}).save_to_disk(
        str(tmp_path / "val"))
    with pytest.raises(SertError, match=r"splits must be train and/or test, got 'validation'"):
        load_examples(str(tmp_path / "val"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SertError, match=r"junk.parquet: not a readable Hugging Face dataset") as e:
        load_examples(str(tmp_path / "junk.parquet"))
    assert "\n" not in str(e.value)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SertError, match=r"empty_dir: not a readable Hugging Face dataset"):
        load_examples(str(tmp_path / "empty_dir"))

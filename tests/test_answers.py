"""The shared extractor on literal outputs of every task's kind, incl. real teacher text."""
import json

import pytest

from sert.answers import (NEXT_EXAMPLE, NEXT_QUESTION, Extraction, extract_answer, has_continuation, is_correct,
                          normalize_answer, truncate_continuation)
from sert.tasks import get_task, read_data


@pytest.mark.parametrize("text,kind,choices,want,method", [
    (" So the answer is yes.", "yesno", None, "yes", "strict"),
    ("Frost is common in December. So the answer is no.\nQuestion: Is ice cold?", "yesno", None, "no", "strict"),
    ("Yes, because commencements happen in winter.", "yesno", None, "yes", "flexible"),
    ("The answer is: True", "yesno", None, "yes", "strict"),
    ("", "yesno", None, None, None),
    ("I am not sure about that at all.", "yesno", None, None, None),
    ("So the answer is (B) enforce.", "choice", ["ignore", "enforce", "authoritarian", "yell at", "avoid"], "B", "strict"),
    ("So the answer is yell at.", "choice", ["ignore", "enforce", "authoritarian", "yell at", "avoid"], "D", "strict"),
    ("So the answer is a library.", "choice", ["bank", "library", "mall", "zoo", "park"], "B", "strict"),
    ("So the answer is e", "choice", ["bank", "library", "mall", "zoo", "park"], "E", "strict"),
    ("They keep money at the bank (A).", "choice", ["bank", "library", "mall", "zoo", "park"], "A", "flexible"),
    ("So the answer is $1,234.50.", "number", None, "1234.5", "strict"),
    ("48/2 = 24 clips in May. 48+24 = 72", "number", None, "72", "flexible"),
    ("So the answer is 5.0 apples.", "number", None, "5", "strict"),
    ("So the answer is -3.", "number", None, "-3", "strict"),
    ("So the answer is \"yajo\".", "text", None, "yajo", "strict"),
    # several "the answer is": the last one that states a usable answer wins (real SERT-arm outputs)
    (" A: no This answer is incorrect. The answer is: B: no So the answer is yes.", "yesno", None, "yes", "strict"),
    (" No, the answer is: No So the answer is yes.", "yesno", None, "yes", "strict"),
    ("Would they? The answer is usually no. The reason is unclear. So the answer is yes.", "yesno", None, "yes",
     "strict"),
    ("So the answer is yes. Then someone asked again and the answer is unclear.", "yesno", None, "yes", "strict"),
    ("The answer is (A). On reflection the answer is (C) mall.", "choice", ["bank", "library", "mall", "zoo", "park"],
     "C", "strict"),
])
def test_extract_literal_outputs(text, kind, choices, want, method):
    got = extract_answer(text, kind, choices)
    assert got.answer == want
    assert got.method == method


def test_continuation_is_cut_before_extraction():
    text = " Frost comes in winter.\nQuestion: Is the sky green? Answer: So the answer is yes."
    assert truncate_continuation(text) == " Frost comes in winter."
    assert extract_answer(text, "yesno").answer is None


def test_the_span_is_where_the_answer_was_read():
    # several "the answer is": the span points at the final answer, the one extracted
    t = "The answer is usually no. The reason is unclear. So the answer is yes."
    got = extract_answer(t, "yesno")
    assert (got.answer, got.method) == ("yes", "strict")
    assert got.span == (t.rindex("yes"), t.rindex("yes") + 3)
    t = "The answer is (A). On reflection the answer is (C) mall."
    got = extract_answer(t, "choice", ["bank", "library", "mall", "zoo", "park"])
    assert got.answer == "C" and t[got.span[0]:got.span[1]] == "(C)"
    t = " 2 + 3 = 5.\nSo the answer is 5 apples \nQuestion: and 7?"
    got = extract_answer(t, "number")
    assert got.answer == "5" and got.span == (t.rindex("5 apples"), t.rindex("5 apples") + 1)
    t = " Yes, birds fly."                               # flexible: the located word
    assert extract_answer(t, "yesno").span == (1, 4)
    t = "So the answer is \"yajo\"."                      # strict, not located: the sentence, trimmed
    got = extract_answer(t, "text")
    assert got.answer == "yajo" and t[got.span[0]:got.span[1]] == '"yajo"'
    assert extract_answer("So the answer is either (a) x or (e) y.", "choice", ["x", "b", "c", "d", "y"]).span is None
    assert extract_answer("I am not sure.", "yesno") == Extraction(None, None)


@pytest.mark.parametrize("text,cut", [
    (" Yes.\nQuestion: Is it?", " Yes."),                # a line opening with Question: / Q: (cut at the newline)
    (" Yes.\n  Q: Is it?", " Yes."),
    (" No.\n* Question: Is it?", " No.\n* "),          # Question: after a space
    (" Yes. Question: Is it?", " Yes. "),
    ("Question: Is it? Answer: yes", ""),                # the text opens with it
    ("Q: Is it?", ""),
    (" Yes. Q: Is it?", " Yes."),                         # Q: after a sentence end
    (" Yes! \tQ : Is it?", " Yes!"),
    (" The Q: value is 3.", None),                        # not a new example
    (" I have a question: why?", None),
    (" Yes.\nQuestions: none", None),
])
def test_one_definition_of_a_next_question(text, cut):
    assert truncate_continuation(text) == (text if cut is None else cut)
    assert has_continuation(text) == (cut is not None) == (NEXT_EXAMPLE.search(text) is not None)


def test_evaluation_stops_at_the_marker_the_definition_is_built_on():
    from sert.templates import STOP_STRINGS, mining_prompt, train_prompt

    assert STOP_STRINGS == [NEXT_QUESTION] == ["Question:"]
    for prompt in (mining_prompt("Is it?"), train_prompt("Is it?")):
        assert prompt.startswith(NEXT_QUESTION) and has_continuation(" Yes. " + prompt)


def test_numbers_compare_as_floats():
    assert is_correct("72", "72", "number")
    assert is_correct(normalize_answer("72.0", "number"), "72", "number")
    assert not is_correct("71", "72", "number")
    assert not is_correct(None, "72", "number")


def _davinci(task_dir, fname):
    return json.loads(read_data(f"{task_dir}/{fname}"))["data"]


@pytest.mark.parametrize("task,task_dir,fname,lo,hi", [
    # Fraction of the real text-davinci-002 completions our extractor finds correct;
    # SOURCES.md (Fine-tune-CoT rule) gives 53.4% StrategyQA, 307/532 last letter, 479/532 coin flip.
    ("strategyqa", "strategyqa", "D_strategy_qa.json", 0.50, 0.57),
    ("svamp", "svamp", "D_svamp.json", 0.55, 0.80),
    ("coin_flip", "coin_flip", "D_coin_flip.json", 0.85, 0.95),
    ("date_understanding", "date_understanding", "D_date_understanding.json", 0.5, 0.9),
    ("tracking_shuffled_objects", "tracking_shuffled_objects", "D_tracking_shuffled_objects.json", 0.4, 0.7),
    ("last_letter_concatenation", "last_letter_concatenation", "D_last_letter_concatenation.json", 0.45, 0.7),
    ("multiarith", "multiarith", "D_multiarith.json", 0.7, 0.95),
])
def test_real_teacher_completions(task, task_dir, fname, lo, hi):
    t = get_task(task)
    exs = t.load_all()
    data = _davinci(task_dir, fname)
    n = ok = 0
    for k, recs in data.items():
        r = recs[0]
        text = r["reasoning_completion"] + "\nTherefore, the answer is" + r["completion"]
        ex = exs[int(k)]
        got = extract_answer(text, ex.kind, ex.choices)
        n += 1
        ok += is_correct(got.answer, ex.answer, ex.kind)
    assert lo <= ok / n <= hi, (task, ok, n)


def test_real_palm_csqa_rationales_parse():
    rows = [json.loads(line) for line in read_data("commonsense_qa/palm/cqa_train.json").splitlines()[:200]]
    texts = json.loads(read_data("commonsense_qa/palm/train_CoT_0.json"))[:200]
    ok = 0
    for row, text in zip(rows, texts):
        got = extract_answer(text, "choice", row["choices"])
        ok += got.answer is not None and row["choices"][ord(got.answer) - 65] == row["answer"]
    # SOURCES.md: the parsed PaLM answer equals gold in 74.3% over all 9741
    assert 0.65 <= ok / 200 <= 0.85


def test_an_answer_turn_marker_is_not_option_a():
    """Real base-model outputs on CommonsenseQA: a line that is only "A:" opens the next dialogue turn."""
    ch = ["bank", "library", "mall", "zoo", "park"]
    assert extract_answer("\nA:", "choice", ch).answer is None
    assert extract_answer(" \n\nA: ", "choice", ch).answer is None
    assert extract_answer(" D\nA:", "choice", ch).answer == "D"
    assert extract_answer(" A.\n\nA:", "choice", ch).answer == "A"
    assert extract_answer("A: bank", "choice", ch).answer == "A"  # a line with more than "A:" reads as before


def test_hedged_choice_is_no_answer():
    ch = ["aquarium", "lake", "sea", "river", "pond"]
    assert extract_answer("So the answer is either (a) aquarium or (e) pond.", "choice", ch).answer is None
    assert extract_answer("So the answer is (a) aquarium.", "choice", ch).answer == "A"

"""bench/check_eval_plain.py is the independent check of `sert eval` (issue 13): its own parser must agree
with sert's extractor on the outputs the full runs produce, and it must read multiple-choice letters for
CommonsenseQA, where a yes/no parser would count every answer as missing."""
import pytest

import bench.check_eval_plain as plain
from sert.answers import extract_answer

CHOICES = ["bank", "library", "department store", "mall", "new york"]


@pytest.mark.parametrize("text", [
    " Let's think step by step. A revolving door is found at banks. So the answer is (A).",
    " So the answer is (d). Question: Where would you buy a dress? Answer Choices: (A) x (B) y",
    " The answer is (B). Let's think step by step. (C) is wrong. So the answer is (C).",
    " (E) new york is a city. So the answer is E.",
])
def test_choice_parser_agrees_with_sert(text):
    assert plain.parse(text, choice=True) == extract_answer(text, "choice", CHOICES).answer


def test_choice_parser_does_not_read_an_article_as_option_a():
    assert plain.parse(" the answer is a bank nearby.", choice=True) is None
    assert plain.parse(" the answer is a bank nearby.") is None   # the yes/no parser finds nothing either


@pytest.mark.parametrize("text", [
    " Let's think step by step. No, the Dalai Lama is not a human being. So the answer is no.",
    " The answer is usually no. So the answer is yes.",
    " yes",
])
def test_yesno_parser_agrees_with_sert(text):
    assert plain.parse(text) == extract_answer(text, "yesno").answer

"""sert.identity: the one "is this the same run?" comparison behind mine, eval, train and sert run."""
from __future__ import annotations

import pytest

from sert.errors import SertError
from sert.identity import differences, refuse_other


def test_differences_name_each_changed_key_in_the_given_order():
    old, new = {"b": 1, "a": "x", "c": 3}, {"b": 2, "a": "y", "c": 3, "d": None}
    assert differences(old, new) == ["a: 'x' -> 'y'", "b: 1 -> 2"]       # sorted; d is None on both sides
    assert differences(old, new, keys=["b", "a"]) == ["b: 1 -> 2", "a: 'x' -> 'y'"]
    assert differences(old, {"e": 1}, keys=["a"]) == ["a: 'x' -> None"]
    assert differences(old, dict(old)) == []


def test_refuse_other_is_one_line_naming_the_differences(tmp_path):
    refuse_other(tmp_path, "holds x", {"a": 1}, {"a": 1}, "use another --out")   # the same run: nothing
    with pytest.raises(SertError) as e:
        refuse_other(tmp_path, "holds x", {"a": 1, "b": 2}, {"a": 5, "b": 6}, "use another --out")
    assert str(e.value) == f"{tmp_path} holds x (a: 1 -> 5; b: 2 -> 6); use another --out"
    with pytest.raises(SertError, match=r"\(a: 1 -> 5; \.\.\.\); advice$"):
        refuse_other(tmp_path, "holds x", {"a": 1, "b": 2}, {"a": 5, "b": 6}, "advice", limit=1)

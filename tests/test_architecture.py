"""The package's shape: no import circle among sert's modules, the command layer on top (no
stage module imports it), and every config field's help (meaning, paper value or our decision)
reaching ``sert <command> --help``."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import sert
from sert import config

SRC = Path(sert.__file__).parent
COMMAND_LAYER = {"sert.cli", "sert.commands"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sert_imports(path: Path, modules: set[str]) -> set[str]:
    """The sert modules ``path`` imports anywhere (module level or inside functions)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            out |= subs or ({target} & modules)
    return out - {me}


def import_graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): sert_imports(p, modules) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles closed by a back edge of a depth-first search: empty exactly when the graph has none."""
    found, state = [], {}

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def test_the_graph_reader_sees_a_circle_and_lazy_imports(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = import_graph()
    assert "sert.sampling" in g["sert.mine"] and "sert.vllm_backend" in g["sert.mine"]  # lazy import inside run_mine
    assert {"sert.commands", "sert.mine", "sert.config"} <= g["sert.commands.mine"]


def test_no_import_circle_among_sert_modules():
    assert cycles(import_graph()) == []


def test_no_stage_module_imports_the_command_layer():
    g = import_graph()
    below = {m: deps & COMMAND_LAYER for m, deps in g.items()
             if m not in COMMAND_LAYER and not m.startswith("sert.commands.") and m != "sert.__main__"}
    assert {m: d for m, d in below.items() if d} == {}


def test_every_config_field_has_help_with_its_source():
    stage = (config.MineConfig, config.FilterConfig, config.TrainConfig, config.TeachConfig, config.EvalConfig,
             config.JudgeConfig)
    for cls in stage + (config.ArmConfig, config.RunConfig):
        for f in dataclasses.fields(cls):
            assert config.field_help(f).strip(), f"{cls.__name__}.{f.name} has no help"
            if cls in stage:  # each stage setting cites the paper (S) or our decision (D)
                assert "(S)" in config.field_help(f) or "(D)" in config.field_help(f), f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("command, flag", [
    ("mine", "--top-k-branches N first tokens to branch on; (S) paper: 5 [default: 5]"),
    ("mine", "--top-p X top-p of the sampler; (S) paper: 0.95 [default: 0.95]"),
    ("filter", "--min-tokens N drop paths shorter than this many tokens; (S) paper: 25 [default: 25]"),
    ("train", "--learning-rate X Adam learning rate; (S) paper: 3e-4 [default: 0.0003]"),
    ("train", "--epochs X training epochs; (S) paper: 20 [default: 20]"),
    ("teach", "--teacher TEXT auto (the task's shipped rationales)"),
    ("mine", "--batch-questions N|auto questions decoded together"),
])
def test_help_shows_each_option_s_meaning_and_paper_value(command, flag, capsys, monkeypatch):
    from sert.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # no wrapping: the assertion reads whole help lines

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert flag in " ".join(capsys.readouterr().out.split())

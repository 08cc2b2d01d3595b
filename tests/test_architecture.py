"""The package's shape: no import circle among sert's modules, the command layer on top (no
stage module imports it), the tools (``sert.tools``: the benchmark) apart from the stages (no stage
module imports them; they use only the stages' public names), no function longer than
:data:`MAX_FUNCTION_LINES`, and every config field's help (meaning, paper value or our decision)
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
TOOLS = "sert.tools"
MAX_FUNCTION_LINES = 70  # issue 27: a function reads as one screen of named steps


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sert_imports(path: Path, modules: set[str]) -> set[str]:
    """The sert modules ``path`` imports anywhere (module level or inside functions)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package, modules) - {me}


def imports_in(source: str, package: str, modules: set[str]) -> set[str]:
    """The ``modules`` that ``source`` (a module of ``package``) imports, at its top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            out |= subs or ({target} & modules)
    return out


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
    assert "sert.sampling" in g["sert.mine"] and "sert.vllm_backend" in g["sert.mine"]
    assert {"sert.commands", "sert.mine", "sert.config"} <= g["sert.commands.mine"]
    mods = {"sert.models", "sert.tasks", "sert.io"}
    lazy = "from .io import read_json\ndef f():\n    from .models import load_model\n    import sert.tasks\n"
    assert imports_in(lazy, "sert", mods) == mods


def test_no_import_circle_among_sert_modules():
    assert cycles(import_graph()) == []


def test_no_stage_module_imports_the_command_layer():
    g = import_graph()
    below = {m: deps & COMMAND_LAYER for m, deps in g.items()
             if m not in COMMAND_LAYER and not m.startswith("sert.commands.") and m != "sert.__main__"}
    assert {m: d for m, d in below.items() if d} == {}


def is_tool(m: str) -> bool:
    return m == TOOLS or m.startswith(TOOLS + ".")


def is_command(m: str) -> bool:
    return m in COMMAND_LAYER or m.startswith("sert.commands.") or m == "sert.__main__"


def private_names(source: str, package: str, modules: set[str]) -> set[str]:
    """The underscore-prefixed names ``source`` (a module of ``package``) takes from sert modules:
    ``from sert.x import _y`` (relative too) or ``x._y`` on a sert module it imported."""
    out, bound = set(), {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                if f"{target}.{a.name}" in modules:  # a module: remember the name it is bound to
                    bound[a.asname or a.name] = f"{target}.{a.name}"
                elif target in modules and a.name.startswith("_"):
                    out.add(f"{target}.{a.name}")
        elif isinstance(node, ast.Import):
            bound.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            out.add(f"{bound[node.value.id]}.{node.attr}")
    return out


def test_the_private_name_reader_sees_both_forms():
    mods = {"sert", "sert.mine", "sert.tools", "sert.tools.bench"}
    src = ("from ..mine import _forward_kw, mine\nfrom .. import mine as m\n"
           "def f():\n    return m._new_cache(None), m.mine, m.__doc__\n")
    assert private_names(src, "sert.tools", mods) == {"sert.mine._forward_kw", "sert.mine._new_cache"}
    assert private_names("from sert.mine import mine\n", "sert.tools", mods) == set()


def test_tools_live_apart_from_the_stages_and_use_their_public_api():
    g = import_graph()
    tools = sorted(m for m in g if is_tool(m))
    assert "sert.tools.bench" in tools and not any(m.startswith("sert.bench") for m in g)
    users = {m for m, deps in g.items() if any(is_tool(d) for d in deps) and not is_tool(m)}
    assert users and all(is_command(m) for m in users), users  # `sert bench`, nothing below the commands
    modules = set(g)
    for m in tools:
        path = SRC.parent.joinpath(*m.split(".")).with_suffix(".py")
        if not path.exists():
            path = SRC.parent.joinpath(*m.split("."), "__init__.py")
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        assert private_names(path.read_text(encoding="utf-8"), package, modules) == set(), m


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


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """Every function (nested ones and methods too, by qualified name) of ``source`` longer than ``limit``
    lines, from its ``def`` line to its last line, with its length."""
    out: dict[str, int] = {}

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = getattr(child, "name", "")
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = child.end_lineno - child.lineno + 1
                if n > limit:
                    out[prefix + name] = n
                visit(child, f"{prefix}{name}.")
            else:
                visit(child, f"{prefix}{name}." if isinstance(child, ast.ClassDef) else prefix)

    visit(ast.parse(source), "")
    return out


def test_the_length_check_sees_a_long_function():
    def fn(name: str, lines: int, indent: str = "") -> str:  # a function of exactly ``lines`` lines
        return f"{indent}def {name}():\n" + "".join(f"{indent}    x = {i}\n" for i in range(lines - 1))

    src = fn("fits", MAX_FUNCTION_LINES) + "class C:\n" + fn("long", MAX_FUNCTION_LINES + 1, "    ")
    src += "def outer():\n" + fn("inner", MAX_FUNCTION_LINES + 5, "    ")
    assert long_functions(src) == {"C.long": MAX_FUNCTION_LINES + 1, "outer": MAX_FUNCTION_LINES + 6,
                                   "outer.inner": MAX_FUNCTION_LINES + 5}
    assert long_functions(fn("fits", MAX_FUNCTION_LINES)) == {}


def test_no_function_in_sert_is_longer_than_the_limit():
    found = {f"{p.relative_to(SRC.parent)}:{name}": n for p in sorted(SRC.rglob("*.py"))
             for name, n in long_functions(p.read_text(encoding="utf-8")).items()}
    assert found == {}, f"split these into named steps (at most {MAX_FUNCTION_LINES} lines each): {found}"

"""The low layers import only downwards (issue 24, item 19).

Read with `ast`, not by importing: a lazy import inside a function (the old way to dodge a cycle) counts as
much as one at the top. Each module listed may import exactly the cai_gen modules named beside it, no others.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "cai_gen"

# module -> the cai_gen modules it may import. Small on purpose: a new upward edge has to be written here.
ALLOWED = {
    "errors": set(),
    "ids": set(),
    "yamlio": {"errors"},
    "paths": {"errors"},
    "lock": {"errors", "rundir"},
    "routing": {"backends"},                                      # last_text, a pure helper of the package
    "rundir": set(),                                              # the run dir's file names
    "store": {"errors", "ids", "checks", "rundir"},               # checks.desirable: pure, no kinds loaded
    "runfiles": {"routing", "rundir", "store", "yamlio"},         # a run's files, streamed
    # Row and the stage API: below the orchestrator (pipeline, flow, executors), which import it
    "rows": {"checks", "models", "quality", "reward", "stages", "store", "turns", "backends", "config", "ledger",
             "progress", "prompts"},
    "checks.text": {"checks", "backends"},                        # the filters' one implementation (loop_end)
}


def cai_imports(module: str) -> set[str]:
    """Every cai_gen module `module` imports, at the top or inside a function, as dotted names below cai_gen."""
    path = PKG / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PKG / module.replace(".", "/") / "__init__.py"
    pkg = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for t in ast.walk(tree) if isinstance(t, ast.If) and ast.unparse(t.test) in
                   ("TYPE_CHECKING", "typing.TYPE_CHECKING") for b in t.body for n in ast.walk(b)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports exist for annotations, never at run time
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from .. import z
                base = pkg[:len(pkg) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "cai_gen":
                base = node.module.split(".")[1:]
            else:
                continue
            for a in node.names:  # `from . import routing` names a module, `from .ids import base_id` does not
                sub = base + [a.name]
                is_mod = (PKG.joinpath(*sub).with_suffix(".py").exists() or PKG.joinpath(*sub).is_dir())
                out.add(".".join(sub if is_mod else base))
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("cai_gen.")}
    out.discard("")
    out.discard(module)
    return out


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_low_layers_import_only_downwards(module):
    extra = cai_imports(module) - ALLOWED[module]
    assert not extra, f"cai_gen/{module}: imports {sorted(extra)} (allowed: {sorted(ALLOWED[module]) or 'none'})"


def test_the_reader_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The check itself can fail: a lazy `from .review import route` inside a function is found."""
    fake = tmp_path / "cai_gen"
    (fake / "review").mkdir(parents=True)
    (fake / "review" / "route.py").write_text("")
    (fake / "low.py").write_text("from .errors import UserError\n\ndef f():\n    from .review import route\n"
                                 "    import cai_gen.stats\n")
    monkeypatch.setitem(globals(), "PKG", fake)
    assert cai_imports("low") == {"errors", "review.route", "stats"}


def test_the_run_writes_chunks_without_a_closure_over_job_state():
    """pipeline._run held an `emit` closure that handed the Run's rejected/ended lists to the writer and swapped
    them for empty ones; each row carries its outcome, so pipeline.emit reads it off the chunk's rows."""
    tree = ast.parse((PKG / "pipeline.py").read_text(encoding="utf-8"))
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_run")
    nested = [n.name for n in ast.walk(run) if isinstance(n, ast.FunctionDef) and n is not run]
    assert nested == [], f"pipeline._run defines {nested}"
    kept_lists = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("rejected", "ended")
                  and isinstance(n.value, ast.Name) and n.value.id in ("job", "self")]
    assert kept_lists == [], f"pipeline.py keeps per-chunk lists on the Run: {kept_lists}"


def test_no_function_in_the_pipeline_is_a_page_long():
    """pipeline._run was 98 lines doing five jobs (load inputs, chunk, run ray, run locally, finish); each is a
    function of its own now, short enough to read at once."""
    tree = ast.parse((PKG / "pipeline.py").read_text(encoding="utf-8"))
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 50}
    assert long == {}, f"pipeline.py functions over 50 lines: {long}"


def modules() -> list[str]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out.append(".".join(parts))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {m: {i for i in cai_imports(m) if i in mods} for m in mods}
    # a package and its own children (backends/__init__ naming its kinds, checks/__init__ loading its registry)
    # is one unit: those edges are how a registry fills itself, not a layering loop
    return {m: {i for i in deps if not (i.startswith(m + ".") or m.startswith(i + "."))} for m, deps in graph.items()}


def test_no_import_cycles_in_the_package():
    """Issue 24 item 19: each module imports only downwards. There were two loops: checks.model -> turns ->
    constitution -> checks, and pipeline <-> executors.ray (the replica imported the pipeline back)."""
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []

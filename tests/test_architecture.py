"""The layout is the architecture: imports point down the layers and there is no import cycle.

Built from the source with ``ast`` (no import is executed), so it sees function-level imports too:

    core  <-  models  <-  io  <-  config, rewards, sft  <-  tasks  <-  evaluation  <-  trainer, study  <-  cli

A module may import its own layer or a lower one. ``rajax.core`` imports only ``rajax.core``.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rajax"
LAYERS = [
    ("rajax.core",),
    ("rajax.models",),
    ("rajax.io",),
    ("rajax.config", "rajax.rewards", "rajax.sft"),
    ("rajax.tasks",),
    ("rajax.evaluation",),
    ("rajax.trainer", "rajax.study"),
    ("rajax.cli", "rajax.__main__"),
]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _layer(module: str) -> int:
    if module == "rajax":
        return 0
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)")


def _imports(modules):
    """{module: [(imported rajax module, line, is_function_level)]}."""
    edges = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        found = []

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                    # `from rajax.core import ppo` imports the module rajax.core.ppo; `from x import name`
                    # (a function, a class) imports x.
                    targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in modules else child.module
                               for a in child.names]
                for t in targets:
                    if t == "rajax" or t.startswith("rajax."):
                        found.append((t, child.lineno, in_function))
                visit(child, fn)

        visit(tree, False)
        edges[name] = found
    return edges


def test_every_module_is_in_a_layer_and_imports_point_down():
    modules = _modules()
    edges = _imports(modules)
    upward = []
    for src, targets in edges.items():
        for dst, line, _ in targets:
            assert dst in modules, f"{src}:{line} imports {dst}, which does not exist"
            if _layer(dst) > _layer(src):
                upward.append(f"{src}:{line} -> {dst}")
            if src.startswith("rajax.core") and not dst.startswith("rajax.core"):
                upward.append(f"{src}:{line} -> {dst} (core imports only core)")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)
    assert len(modules) > 30  # the walk found the package


def test_no_import_cycle_and_no_function_level_rajax_import():
    modules = _modules()
    edges = _imports(modules)
    local = [f"{src}:{line} -> {dst}" for src, ts in edges.items() for dst, line, fn in ts if fn]
    assert not local, "function-level rajax imports (hide cycles; import at the top):\n" + "\n".join(local)
    graph = {m: sorted({d for d, _, _ in ts if d != m}) for m, ts in edges.items()}
    # A package's __init__ importing its own submodules is not a cycle back to it, but a submodule
    # importing its package's __init__ while the __init__ imports it is: both are edges here.
    state, stack, cycles = {}, [], []

    def dfs(m):
        state[m] = "open"
        stack.append(m)
        for d in graph.get(m, []):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                dfs(d)
        stack.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            dfs(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layers_test_would_catch_a_violation(tmp_path):
    """The checker itself: a core module importing the trainer, and a two-module cycle, are found."""
    pkg = tmp_path / "rajax"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from rajax import trainer\n")
    (pkg / "trainer.py").write_text("def f():\n    from rajax.core import a\n")
    global ROOT
    old, ROOT = ROOT, pkg
    try:
        edges = _imports(_modules())
        assert ("rajax.trainer", 1, False) in edges["rajax.core.a"]
        assert ("rajax.core.a", 2, True) in edges["rajax.trainer"]
        try:
            test_every_module_is_in_a_layer_and_imports_point_down()
        except AssertionError as e:
            assert "rajax.core.a:1 -> rajax.trainer" in str(e)
        else:
            raise AssertionError("the upward import was not caught")
        try:
            test_no_import_cycle_and_no_function_level_rajax_import()
        except AssertionError as e:
            assert "rajax.trainer:2 -> rajax.core.a" in str(e)
        else:
            raise AssertionError("the function-level import was not caught")
    finally:
        ROOT = old


def _code_mentions(path: pathlib.Path, word: str) -> list[int]:
    """Lines where ``word`` appears in code (names, attributes, string literals), docstrings excluded."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    hits = []
    for node in ast.walk(tree):
        text = (node.value if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings else
                node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else
                node.name if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else "")
        if word in text.lower():
            hits.append(node.lineno)
    return hits


def test_no_task_is_special_cased_outside_the_tasks():
    # A new task is a plug-in in rajax/tasks/: the trainer, evaluation, sft and the commands never name
    # one (usage examples in docstrings aside).
    paths = [ROOT / "trainer.py", ROOT / "sft.py", ROOT / "study.py",
             *(ROOT / "evaluation").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
    for task in ("synthetic", "imdb", "jigsaw", "rtp"):
        found = {str(p.relative_to(ROOT)): _code_mentions(p, task) for p in paths}
        assert not {k: v for k, v in found.items() if v}, f"{task} is named in code outside rajax/tasks: {found}"
    assert _code_mentions(pathlib.Path(__file__), "synthetic")  # the probe itself finds a mention

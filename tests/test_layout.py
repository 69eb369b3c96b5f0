"""The house: worker code never imports the driver, the shared config is light, no import cycles."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainables", "orchestrator")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in a file, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def test_trainables_never_imports_orchestrator():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in sorted((ROOT / "trainables").rglob("*.py"))
                 for module, line in _imports(path) if module.split(".")[0] == "orchestrator"]
    assert not offenders, offenders


def test_shared_config_loads_neither_torch_nor_ray():
    code = ("import sys, trainables.config, trainables.metric_names, trainables.tree; "
            "print(sorted(m for m in ('torch', 'ray', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_no_import_cycle_among_the_project_modules():
    """Module-level imports between the project's modules form no cycle (lazy imports inside
    functions are how the light commands stay light, and are allowed to point anywhere)."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        deps = set()
        for node in tree.body:  # top level only
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_a_model_load_is_refused_where_none_may_happen(monkeypatch, micro_assets):
    """A sweep trial's process sets NO_MODEL_LOADS (orchestrator/trial.py): any model load there
    fails, so the sweep tests, whose trials finish, show the trial process loads no model."""
    import pytest

    from trainables.models import NO_MODEL_LOADS, load_causal_lm

    assert "os.environ[NO_MODEL_LOADS]" in (ROOT / "orchestrator" / "trial.py").read_text()
    monkeypatch.setenv(NO_MODEL_LOADS, "1")
    with pytest.raises(RuntimeError, match="must load none"):
        load_causal_lm(str(micro_assets / "model"))
    monkeypatch.delenv(NO_MODEL_LOADS)
    assert load_causal_lm(str(micro_assets / "model")) is not None

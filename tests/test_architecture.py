"""The shape of the code (docs/architecture.md): imports form layers, the leaves import nothing else of lowtune,
no module reaches into another's private names or imports one by string, the methods import no other method,
and the commands that read a finished run do not import TRL."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lowtune"

# Modules (or packages) that may import nothing of lowtune but lowtune.errors and their own package's modules.
LEAVES = ["lowtune.errors", "lowtune.kernels", "lowtune.rewards", "lowtune.tools", "lowtune.pretokenizers",
          "lowtune.logs", "lowtune.guard", "lowtune.results", "lowtune.levers"]  # fmt: skip


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


MODULES = modules()


def imports(tree: ast.Module, top_level_only: bool = False) -> list[tuple[int, str, list[str]]]:
    """(line, imported lowtune module, names) of each import of lowtune; `from lowtune.x import y` names the
    submodule lowtune.x.y when there is one."""
    found = []
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lowtune"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else node.module, [alias.name]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("lowtune")]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative>", [a.name for a in node.names]))
    return found


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_else_of_lowtune(leaf):
    for name, tree in MODULES.items():
        if in_package(name, leaf):
            for line, target, _ in imports(tree):
                allowed = target in ("<relative>", "lowtune", "lowtune.errors") or in_package(target, leaf)
                assert allowed, f"{name}:{line}: {target}"
                assert target != "lowtune" or in_package(name, leaf), f"{name}:{line}"


def test_no_private_names_across_modules():
    for name, tree in MODULES.items():
        for line, target, names in imports(tree):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private or target == name, f"{name}:{line} imports {private} from {target}"


def test_no_internal_import_by_string():
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module",
                "__import__",
            ):
                arg = node.args[0] if node.args else None
                literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                assert not (literal and arg.value.startswith(("lowtune", "."))), f"{name}:{node.lineno}"
                assert not any(isinstance(a, ast.Constant) for a in node.args[1:]), f"{name}:{node.lineno}"


def test_methods_import_no_other_method():
    methods = [m for m in MODULES if m.startswith("lowtune.recipes.")]
    assert len(methods) >= 5
    for name in methods:
        for line, target, _ in imports(MODULES[name]):
            assert not in_package(target, "lowtune.recipes"), f"{name}:{line} imports {target}"


def test_module_level_imports_form_layers():
    """No cycle among the imports at the top of modules (a function may import lazily from a higher layer only
    where noted in docs/architecture.md; none does so into a cycle at import time)."""
    graph = {
        name: {target for _, target, _ in imports(tree, top_level_only=True) if target in MODULES and target != name}
        for name, tree in MODULES.items()
    }

    def visit(module, trail):
        assert module not in trail, " -> ".join([*trail, module])
        for dep in graph[module]:
            if not in_package(module, dep):  # a package's modules may import their package's __init__ names
                visit(dep, [*trail, module])

    for module in graph:
        visit(module, [])


def test_reading_a_finished_run_imports_no_trl(tmp_path, tiny_path, random_adapter):
    """generate, merge, export and score read a run's config as data: no TRL config class, so no TRL import."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    adapter = random_adapter(tiny_path, tmp_path / "adapter")
    scorer = AutoModelForSequenceClassification.from_pretrained(tiny_path, num_labels=1)
    get_peft_model(scorer, LoraConfig(r=2, target_modules=["q_proj"], task_type="SEQ_CLS")).save_pretrained(
        tmp_path / "reward"
    )
    code = f"""
import json, sys
from lowtune.cli import main
codes = [
    main(["generate", {str(adapter)!r}, "--prompt", "hi", "--max-new-tokens", "2"]),
    main(["merge", {str(adapter)!r}, "--out", {str(tmp_path / "merged")!r}, "--dtype", "fp32"]),
    main(["export", {str(tmp_path / "merged")!r}, "--out", {str(tmp_path / "m.gguf")!r}]),
    main(["score", {str(tmp_path / "reward")!r}, "--prompt", "hi", "--reply", "hello"]),
]
print(json.dumps({{"codes": codes, "trl": sorted(m for m in sys.modules if m == "trl" or m.startswith("trl."))}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0, 0], "trl": []}, proc.stdout[-2000:]

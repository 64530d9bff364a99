"""The package's shape: every module imports on its own, and no two modules import each other."""

import ast
import subprocess
import sys
from pathlib import Path

import tunesmith

ROOT = Path(tunesmith.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted(ROOT.rglob("*.py")):
        name = ".".join(("tunesmith", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        mods[name] = p
    return mods


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    names = [m for m in _modules() if not m.endswith("__main__")]
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_no_two_modules_import_each_other():
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):  # imports inside functions count too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunesmith"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    edges[m].add(target if target in mods else node.module)
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods)
    pairs = sorted(
        {
            tuple(sorted((a, b)))
            for a in mods
            for b in edges[a]
            if b != a and b in mods and b != "tunesmith" and a in edges[b]
        }
    )
    # a package's __init__ re-exporting its own submodules is not a cycle
    pairs = [(a, b) for a, b in pairs if not (b.startswith(a + ".") or a.startswith(b + "."))]
    assert pairs == []

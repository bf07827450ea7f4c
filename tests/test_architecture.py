"""The package's structure as code: layers (import-linter), no private imports, command names."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import workflow_scripts

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workflow_scripts"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ".".join(path.relative_to(REPO).with_suffix("").parts)


def test_no_module_imports_another_modules_private_name():
    found = []
    for path, module in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workflow_scripts") \
                    or isinstance(node, ast.ImportFrom) and node.level:
                found += [f"{module}: from {'.' * node.level}{node.module or ''} import {a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_private_name_check_sees_a_private_import(tmp_path):
    """The check above is not blind: the same walk flags a made-up private import."""
    tree = ast.parse("from workflow_scripts.reporting.paper_tables import _x\n")
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert names == ["_x"]


@pytest.mark.skipif(not shutil.which("lint-imports", path=str(Path(sys.executable).parent)),
                    reason="import-linter is in the test extra (make install)")
def test_layers_import_downward_only():
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_every_command_name_names_a_module_with_main():
    import importlib

    for name, target in workflow_scripts.COMMANDS.items():
        module = importlib.import_module(f"workflow_scripts.{target}")
        assert callable(getattr(module, "main", None)), f"{name} -> {target} has no main()"


def test_every_rule_command_is_a_command_name():
    """Rules call `python -m workflow_scripts.<command>`; each must resolve (a moved module keeps its name)."""
    called = set()
    for smk in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        called |= set(re.findall(r"-m workflow_scripts\.([\w.]+)", smk.read_text(encoding="utf-8")))
    assert called
    unknown = [c for c in sorted(called) if c not in workflow_scripts.COMMANDS
               and not (PACKAGE / (c.replace(".", "/") + ".py")).exists()]
    assert not unknown, unknown


@pytest.mark.parametrize("command", ["train", "sources.osf", "tables"])
def test_command_names_run_as_modules(command):
    proc = subprocess.run([sys.executable, "-m", f"workflow_scripts.{command}", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: "), proc.stdout[:200]
    # argparse's program name is the real module's file
    target = workflow_scripts.COMMANDS[command].rsplit(".", 1)[-1]
    assert proc.stdout.startswith(f"usage: {target}.py"), proc.stdout[:200]


def test_old_import_of_a_command_name_gives_the_public_names():
    from workflow_scripts.nnunet import train as real
    from workflow_scripts import train as alias

    assert alias.main is real.main

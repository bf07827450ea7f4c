"""The conda envs of the rules, checked offline (no conda and no channels here).

Every env file is valid YAML with the project's channels, every dependency carries an exact pin
that parses (conda specs with py-rattler's strict MatchSpec, pip specs with packaging), the
versions are those of requirements.lock / pyproject.toml, the nnU-Net env pins a CUDA build of
PyTorch, every rule names an env, and each env holds what its rules' scripts import.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from rattler import MatchSpec

from helpers import REPO

ENVS = REPO / "envs"
ENV_FILES = sorted(ENVS.glob("*.yaml"))
CHANNELS = ["conda-forge", "nodefaults"]
# conda-forge names whose PyPI name differs
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib", "pytorch": "torch"}
# Pinned in an env but not in requirements.lock, each for a stated reason.
NOT_IN_LOCK = {
    "python": "the interpreter (pyproject: requires-python)",
    "pip": "the installer of the nnU-Net env's pip section",
    "setuptools": "needed by the CUDA torch wheel; pip freeze omits it",
    "cuda-toolkit": "CUDA runtime pinned by the CUDA torch wheel (the lock has the CPU build)",
    "nvidia-cudnn-cu13": "cuDNN pinned by the CUDA torch wheel (the lock has the CPU build)",
}
# Envs pinned to a lock of their own instead of requirements.lock, each for a stated reason.
ENV_LOCKS = {
    # segment-anything imports torchvision, which does not import beside the project's CPU torch 2.13.0
    "sam.yaml": "requirements-sam.lock",
}
EXACT_CONDA = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_.-]*)==?(?P<version>\d+(\.\d+)+)$")


def lock_pins(lock: str = "requirements.lock") -> dict[str, str]:
    pins = {}
    for line in (REPO / lock).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def load_env(path: Path) -> dict:
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(env, dict), f"{path.name}: not a YAML mapping"
    return env


def split_deps(env: dict) -> tuple[list[str], list[str]]:
    """(conda specs, pip specs) of an env file."""
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            conda.append(dep)
        elif isinstance(dep, dict) and set(dep) == {"pip"}:
            pip.extend(dep["pip"])
        else:
            raise AssertionError(f"{env['name']}: unexpected dependency entry {dep!r}")
    return conda, pip


def pinned_versions(env: dict) -> dict[str, str]:
    """{canonical PyPI name: version} of every dependency of an env."""
    conda, pip = split_deps(env)
    out = {}
    for spec in conda:
        m = EXACT_CONDA.match(spec)
        assert m, f"{env['name']}: {spec!r} is not pinned to one version (name=X.Y.Z)"
        name = CONDA_TO_PYPI.get(m["name"], m["name"])
        out[canonicalize_name(name)] = m["version"]
    for spec in pip:
        req = Requirement(spec)
        out[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return out


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_is_valid_and_pinned(path):
    env = load_env(path)
    assert set(env) == {"name", "channels", "dependencies"}, f"{path.name}: keys {sorted(env)}"
    assert env["name"] == f"panseg-{path.stem}"
    # conda-forge only: 'defaults' has other licence terms and other builds.
    assert env["channels"] == CHANNELS, f"{path.name}: channels must be {CHANNELS}"
    conda, pip = split_deps(env)
    assert conda, f"{path.name}: no conda dependencies"
    for spec in conda:
        parsed = MatchSpec(spec, strict=True)  # raises on a spec conda would not read
        assert parsed.name.normalized == spec.split("=")[0]
        assert EXACT_CONDA.match(spec), f"{path.name}: {spec!r} is not pinned to one version (name=X.Y.Z)"
    if pip:
        assert any(s.startswith("pip=") for s in conda), f"{path.name}: a pip section needs a pinned pip"
    for spec in pip:
        assert not spec.startswith("-"), f"{path.name}: pip option {spec!r}: no index options (see docs/cluster.md)"
        req = Requirement(spec)
        assert not req.marker and not req.url, f"{path.name}: {spec!r}: plain pins only"
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version, (
            f"{path.name}: {spec!r} is not pinned to one version"
        )
    names = [canonicalize_name(CONDA_TO_PYPI.get(s.split("=")[0], s.split("=")[0])) for s in conda]
    names += [canonicalize_name(Requirement(s).name) for s in pip]
    assert len(names) == len(set(names)), f"{path.name}: a package is listed twice"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_versions_are_the_projects(path):
    lock_file = ENV_LOCKS.get(path.name, "requirements.lock")
    lock = lock_pins(lock_file)
    for name, version in pinned_versions(load_env(path)).items():
        if name in NOT_IN_LOCK:
            continue
        assert name in lock, f"{path.name}: {name} is not in {lock_file} (add it there, or explain it in NOT_IN_LOCK)"
        assert version == lock[name], f"{path.name}: {name} {version}, {lock_file} has {lock[name]}"


def test_sam_env_is_the_sam_venv():
    """envs/sam.yaml and .venv-sam (make sam-env) install the same pins: requirements-sam.lock, less
    the test runner; torch and torchvision as the exact PyPI (CUDA) build; shared packages at the
    versions of requirements.lock."""
    env = pinned_versions(load_env(ENVS / "sam.yaml"))
    sam_lock, lock = lock_pins("requirements-sam.lock"), lock_pins()
    test_only = {"pytest", "iniconfig", "pluggy", "pygments"}
    assert {n for n in sam_lock if n not in test_only} == set(env) - {"python", "pip", "setuptools"}
    assert "segment-anything" in env and (env["torch"], env["torchvision"]) == ("2.14.1", "0.29.1")
    _, pip = split_deps(load_env(ENVS / "sam.yaml"))
    reqs = {canonicalize_name(Requirement(s).name): Requirement(s) for s in pip}
    assert all(next(iter(reqs[n].specifier)).operator == "===" for n in ("torch", "torchvision"))
    shared = {n for n in sam_lock if n in lock and n not in ("torch", "torchvision")}
    assert {n: sam_lock[n] for n in shared} == {n: lock[n] for n in shared}


def test_pyproject_and_lock_agree():
    lock = lock_pins()
    project = pyproject()["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    for dep in deps:
        req = Requirement(dep)
        (spec,) = req.specifier
        assert spec.operator == "==", f"pyproject.toml: {dep!r} is not pinned"
        assert lock.get(canonicalize_name(req.name)) == spec.version, f"pyproject.toml {dep!r} vs requirements.lock"


def test_envs_use_the_projects_python():
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    versions = {pinned_versions(load_env(p))["python"] for p in ENV_FILES}
    assert len(versions) == 1, f"envs pin different Pythons: {versions}"
    assert versions.pop() in requires


def test_nnunet_env_pins_a_cuda_build_of_torch():
    """PyPI's Linux torch 2.13.0 wheel is the CUDA 13.0 build; `===` refuses 2.13.0+cpu."""
    env = load_env(ENVS / "nnunet.yaml")
    conda, pip = split_deps(env)
    assert not any(s.split("=")[0] == "pytorch" for s in conda), "torch comes from pip (docs/cluster.md)"
    lock = lock_pins()
    reqs = {canonicalize_name(Requirement(s).name): Requirement(s) for s in pip}
    for name in ("torch", "torchvision"):
        (spec,) = reqs[name].specifier
        assert spec.operator == "===" and spec.version == lock[name], (
            f"{name}: pin the exact PyPI (CUDA) build as {name}==={lock[name]}, not {spec}"
        )
    # the CUDA runtime that wheel pins is named, so the build is visible in the env file
    assert str(reqs["cuda-toolkit"].specifier).startswith("==13.")
    assert "nvidia-cudnn-cu13" in reqs
    assert "cpu" not in (ENVS / "nnunet.yaml").read_text(encoding="utf-8").split("dependencies:")[1]


# ---- every rule names an env, and the env holds what its scripts import ------------------------
@pytest.fixture(scope="module")
def rules():
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "rule_inventory.py"), str(REPO / "config" / "paper.yaml")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["rules"]


def test_every_rule_names_a_pinned_env(rules):
    for rule in rules:
        if rule["norun"]:
            continue  # `all` runs nothing
        assert rule["conda"], f"rule {rule['name']} ({rule['snakefile']}) has no conda: directive"
        env = Path(rule["conda"])
        assert env.parent == ENVS and env in ENV_FILES, f"rule {rule['name']}: conda env {env} is not one of envs/*.yaml"
        # env-modules would load software on top of the env (and the SLURM test relies on none)
        assert not rule["envmodules"], f"rule {rule['name']} declares envmodules"


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def third_party_imports(module: str) -> set[str]:
    """Top-level names of non-stdlib packages a workflow_scripts module imports, transitively.

    The entry module counts all its imports (also those inside functions); a module it imports
    counts its module-level imports, and the function-level imports of the names imported
    from it, so a helper's lazy `import torch` binds only the rules that call that helper.
    """
    found: set[str] = set()
    seen: set[tuple[str, str | None]] = set()

    def visit(mod: str, names: set[str] | None):
        key = (mod, ",".join(sorted(names)) if names is not None else None)
        if key in seen:
            return
        seen.add(key)
        path = _module_file(mod)
        if path is None:
            return
        parts = mod.split(".")
        for i in range(1, len(parts)):
            visit(".".join(parts[:i]), set())
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if names is None or node.name in names:
                    nodes.extend(ast.walk(node))
            else:
                nodes.extend(ast.walk(node))
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    handle(alias.name, None)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                imported = {a.name for a in node.names}
                submodules = {n for n in imported if _module_file(f"{target}.{n}")}
                for sub in submodules:
                    handle(f"{target}.{sub}", None)
                handle(target, imported - submodules)

    def handle(mod: str, names: set[str] | None):
        top = mod.split(".")[0]
        if top == "workflow_scripts":
            visit(mod, names)
        elif top not in sys.stdlib_module_names and top != "__future__":
            found.add(top)

    visit(module, None)
    return found


def test_envs_hold_what_the_rules_import(rules):
    dists = packages_distributions()  # import name -> distributions, from this environment
    catalog = ["workflow_scripts.trainers." + p.stem for p in (REPO / "workflow_scripts" / "trainers").glob("*.py")]
    missing = []
    for rule in rules:
        if rule["norun"]:
            continue
        modules = re.findall(r"python\S* -m (workflow_scripts[\w.]*)", rule["shellcmd"] or "")
        assert modules, f"rule {rule['name']}: no `python -m workflow_scripts.<module>` in its command"
        if rule["name"] in ("train", "train_loco", "predict_oof", "predict_external", "predict_loco"):
            modules += catalog  # trainers are imported by path from config
        held = set(pinned_versions(load_env(Path(rule["conda"]))))
        for module in modules:
            for top in sorted(third_party_imports(module)):
                candidates = {canonicalize_name(d) for d in dists.get(top, [top])}
                if not candidates & held:
                    missing.append(f"rule {rule['name']}: {module} imports {top} ({'/'.join(sorted(candidates))}), "
                                   f"not in {Path(rule['conda']).name}")
    assert not missing, "\n".join(missing)


def test_import_scan_sees_lazy_imports():
    """The scan counts imports inside functions (nnU-Net's are all lazy) but not unused helpers'."""
    assert {"torch", "nnunetv2"} <= third_party_imports("workflow_scripts.nnunet.predict")
    assert "torch" not in third_party_imports("workflow_scripts.nnunet.raw_dataset")

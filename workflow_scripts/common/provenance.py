"""Provenance, read in one place: the workflow's git commit, package versions, the config's sha256.

Used by the versions rule (``reporting.versions``: versions.yml and the report), by bundles
(``deployment.bundle``: what made a bundle) and at parse time by the Snakefile (``git_commit``:
one ``git rev-parse``, the only provenance read a dry run pays for).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

WORKFLOW_ROOT = Path(__file__).resolve().parents[2]  # workflow_scripts/common/ -> the checkout


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20,
                          check=True).stdout.strip()


def git_commit(repo=None) -> str | None:
    """HEAD of the workflow's checkout; None outside git (or without git)."""
    try:
        return _git(repo or WORKFLOW_ROOT, "rev-parse", "HEAD") or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(repo=None) -> dict | None:
    """Commit, branch and whether tracked files differ from the commit; None outside git."""
    repo = repo or WORKFLOW_ROOT
    try:
        return {"commit": _git(repo, "rev-parse", "HEAD"), "branch": _git(repo, "rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(dist: str) -> str | None:
    """Installed version of a distribution (PyPI name), None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def config_sha256(config: dict) -> str:
    """sha256 of the config as canonical JSON (keys sorted, no spaces): the same settings give the same
    hash whatever file or key order they came from."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

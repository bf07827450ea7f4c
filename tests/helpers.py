"""Run Snakemake from tests with this interpreter's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args, workdir=None, timeout=1800, check=True, snakefile=REPO / "Snakefile"):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), *args]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    proc = subprocess.run(cmd, cwd=workdir or REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    counts, inside = {}, False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if line.startswith("job") and "count" in line:
            inside = True
            continue
        if inside:
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(line.strip()) <= {"-", " "}:
                break
    return counts

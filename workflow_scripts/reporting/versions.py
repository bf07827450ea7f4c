"""Provenance of a run: software versions, PyTorch/CUDA, git commit and the config's sha256.

Writes ``results/versions.yml`` (and ``versions.html``, the same content for the Snakemake
report). The config is hashed as canonical JSON (keys sorted, no spaces), so the same settings
give the same sha256 whatever file or key order they came from; the config itself is written
under ``config``. PyTorch and CUDA are reported as seen by the environment this job runs in.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import platform
import sys
from datetime import datetime, timezone

import yaml

from workflow_scripts.common.atomic import write_text
from workflow_scripts.common.provenance import config_sha256, git_state, package_version

log = logging.getLogger(__name__)

# Distributions whose versions matter for the results (PyPI names).
PACKAGES = ["snakemake", "nnunetv2", "torch", "numpy", "scipy", "pandas", "statsmodels", "scikit-learn",
            "matplotlib", "SimpleITK", "nibabel", "jsonschema", "PyYAML", "Jinja2"]


def package_versions(packages=PACKAGES) -> dict[str, str]:
    return {name: package_version(name) or "not installed" for name in packages}


def torch_info() -> dict:
    """PyTorch version and what it sees of CUDA here (import costs a few seconds)."""
    try:
        import torch
    except Exception as exc:  # not installed, or a broken install: say which
        return {"available": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    info = {"available": True, "version": str(torch.__version__), "cuda_build": torch.version.cuda,
            "cuda_available": bool(torch.cuda.is_available())}
    if info["cuda_available"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cudnn"] = str(torch.backends.cudnn.version())
    return info


def git_info(repo_dir) -> dict:
    state = git_state(repo_dir)
    if state is None:
        return {"commit": "unknown (not a git checkout or git not installed)"}
    return {"commit": state["commit"], "branch": state["branch"], "uncommitted_changes": state["dirty"]}


def collect(config: dict, repo_dir, with_torch: bool = True) -> dict:
    return {
        "generated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "torch": torch_info() if with_torch else {"available": "not checked"},
        "git": git_info(repo_dir),
        "config_sha256": config_sha256(config),
        "config": config,
    }


def to_html(info: dict) -> str:
    def rows(d, prefix=""):
        out = []
        for k, v in d.items():
            if isinstance(v, dict) and k != "config":
                out += rows(v, f"{prefix}{k}.")
            elif k != "config":
                out.append(f"<tr><td>{html.escape(prefix + str(k))}</td><td>{html.escape(str(v))}</td></tr>")
        return out

    config = html.escape(yaml.safe_dump(info.get("config", {}), sort_keys=False, allow_unicode=True))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Software versions and configuration</title>
<style>body {{ font-family: sans-serif; font-size: 14px; margin: 1em; }} td {{ padding: 2px 10px;
border-bottom: 1px solid #ddd; }} pre {{ background: #f6f6f6; padding: 0.6em; }}</style></head>
<body><h3>Software versions and configuration</h3>
<table>{''.join(rows(info))}</table>
<h4>Configuration (sha256 {html.escape(info.get('config_sha256', ''))})</h4><pre>{config}</pre></body></html>
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write versions.yml: software versions, CUDA, git commit, config sha256.")
    ap.add_argument("--config-json", required=True, help="the run's config as JSON")
    ap.add_argument("--repo", required=True, help="the workflow's folder (for the git commit)")
    ap.add_argument("--out", required=True, help="versions.yml")
    ap.add_argument("--html", help="the same as HTML (for the report)")
    ap.add_argument("--no-torch", action="store_true", help="do not import torch")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        log.error("--config-json is not valid JSON: %s", exc)
        return 1
    info = collect(config, args.repo, with_torch=not args.no_torch)
    write_text(args.out, yaml.safe_dump(info, sort_keys=False, allow_unicode=True))
    if args.html:
        write_text(args.html, to_html(info))
    log.info("python %s; torch %s; git %s; config sha256 %s", info["python"], info["torch"].get("version"),
             info["git"].get("commit"), info["config_sha256"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

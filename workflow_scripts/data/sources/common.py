"""What the source modules share: settings from config, the command line, output folders."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from workflow_scripts.common.errors import InputError
from workflow_scripts.data.sources.download import RetryPolicy

log = logging.getLogger(__name__)


def retry_policy(settings: dict) -> RetryPolicy:
    defaults = RetryPolicy()
    return RetryPolicy(
        retries=int(settings.get("retries", defaults.retries)),
        backoff_s=float(settings.get("backoff_s", defaults.backoff_s)),
        max_wait_s=float(settings.get("max_wait_s", defaults.max_wait_s)),
        timeout_s=float(settings.get("timeout_s", defaults.timeout_s)),
        progress_s=float(settings.get("progress_s", defaults.progress_s)),
    )


def place_copy(src: Path, dest: Path) -> None:
    """A hard link where the file system allows one (no second copy on disk), else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def cli(description: str, run) -> None:
    """Shared command line: --out, --downloads, --name and --settings (the source's config as JSON)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True, help="folder to build (data/raw/<source>)")
    ap.add_argument("--downloads", help="cache of downloaded files (kept between runs, so they resume)")
    ap.add_argument("--name", default="", help="the source's name in config (for messages)")
    ap.add_argument("--settings", required=True, help="the source's config block as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # its debug lines could show request details
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        log.error("--settings is not JSON (%s)", exc)
        sys.exit(2)
    try:
        run(settings, out=Path(args.out), downloads=Path(args.downloads) if args.downloads else None, name=args.name)
    except InputError as exc:
        log.error("%s", exc)
        sys.exit(1)

"""One archive at a URL with a pinned checksum (e.g. the Decathlon's Task07_Pancreas.tar).

    python -m workflow_scripts.sources.url --out data/raw/msd --downloads data/downloads/msd \\
        --settings '{"url": "https://.../Task07_Pancreas.tar", "md5": "...", "layout": "decathlon",
                     "center": "MSD", "foreground_labels": [1, 2]}'

The archive is downloaded into the cache (resumable, retried, verified against ``sha256`` and/or
``md5`` and ``size``: see download.py), extracted safely into a staging folder beside ``<out>``
and imported into ``<out>`` in the PanSegData raw layout (see layout.py): cases renamed
``<CENTER>_<NNNN>``, labels merged to 0/1 with ``foreground_labels``, ``name_mapping.json``
written. The staging folder is removed at the end, the archive kept (``keep_downloads``).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from workflow_scripts.common.errors import InputError
from workflow_scripts.common.safe_archive import archive_stem, safe_extract
from workflow_scripts.data.sources.common import cli, retry_policy
from workflow_scripts.common.files import file_digest
from workflow_scripts.data.sources.download import Expected, check_token_transport, download, make_session, token_from_env
from workflow_scripts.data.sources.layout import import_dataset

log = logging.getLogger(__name__)

HEX = {"sha256": re.compile(r"^[0-9a-fA-F]{64}$"), "md5": re.compile(r"^[0-9a-fA-F]{32}$")}


def expected_from(settings: dict, url: str) -> Expected:
    for key, rx in HEX.items():
        value = settings.get(key)
        if value and not rx.match(str(value)):
            raise InputError(url, f"{key} {value!r} is not a {key} checksum: pin the archive's real {key} in the "
                                  "source's config (see docs/real_data.md)")
    exp = Expected(size=settings.get("size"), sha256=settings.get("sha256"), md5=settings.get("md5"))
    if not exp.has_checksum():
        raise InputError(url, "no sha256 or md5 pinned for this archive; add one to the source's config")
    return exp


def fetch(settings: dict, out, downloads, name: str = "url") -> dict:
    url = settings["url"]
    exp = expected_from(settings, url)
    out = Path(out)
    downloads = Path(downloads) if downloads else out.parent / f"{out.name}.downloads"
    filename = settings.get("filename") or Path(unquote(urlparse(url).path)).name or "download"
    archive = downloads / filename
    token = token_from_env(settings.get("token_env"))
    check_token_transport(url, token)
    session = make_session(token)
    download(session, url, archive, exp, retry_policy(settings), name=filename)
    if not exp.sha256:
        log.info("%s: sha256 %s (pin it as the source's sha256 to check it on the next download)", filename,
                 file_digest(archive, "sha256"))
    staging = out.parent / f".staging-{out.name}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        root = staging / archive_stem(filename)
        safe_extract(archive, root)

        def member_of(path):  # the staging copy is gone afterwards: name the archive member
            return f"{archive} member {Path(path).relative_to(root).as_posix()}"

        summary = import_dataset(staging, out, layout=settings.get("layout", "auto"), center=settings.get("center"),
                                 foreground_labels=settings.get("foreground_labels"),
                                 drop_cases=settings.get("drop_cases"), mode="move", source_name=name,
                                 origin_of=member_of)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if not settings.get("keep_downloads", True):
        archive.unlink(missing_ok=True)
        log.info("%s: removed the downloaded archive (keep_downloads: false)", filename)
    return summary


def main():
    cli("Download one archive with a pinned checksum and import it in the PanSegData raw layout.", fetch)


if __name__ == "__main__":
    main()

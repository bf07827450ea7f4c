"""PanSegData from OSF: walk a node's file tree with the OSF API v2, download, verify, extract.

    python -m workflow_scripts.sources.osf --out data/raw/osf --downloads data/downloads/osf \\
        --settings '{"node": "kysnj", "files": ["/Pancreas_MRI_Dataset/t1.zip"]}'

The tree is walked from ``<api_url>/nodes/<node>/files/<provider>/``: every page of a listing
(``links.next`` until null), every folder that can hold a wanted file
(``relationships.files.links.related.href``). Files are chosen by their ``materialized_path``
against shell patterns, one pattern per path segment (``*`` does not cross ``/``); every pattern
must match at least one file. Each file is downloaded into the download cache under its OSF path
with its size and checksum from the API (``attributes.size``, ``attributes.extra.hashes``), and
with a pinned size/sha256 from config where one is given (a file that changed upstream is then
an error). Then ``<out>`` is built:

    <out>/<stem>/...          each archive, extracted (t1.zip -> <out>/t1/, safely: see archive.py)
    <out>/<OSF path>          every other file (e.g. "<out>/Meta informations/T1-name_mapping.json")
    <out>/download.json       what was fetched: paths, sizes, checksums, node (never the token)

A private node needs a token: put it in the environment variable named by ``token_env``
(default OSF_TOKEN). It is sent as a bearer header and never written anywhere.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from workflow_scripts.common.atomic import atomic_dir, write_text
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.inventory import write_origins
from workflow_scripts.common.safe_archive import archive_stem, is_archive_name, safe_extract
from workflow_scripts.data.sources.common import cli, place_copy, retry_policy
from workflow_scripts.data.sources.download import (DownloadError, Expected, check_token_transport, download, get_json, make_session,
                       token_from_env)

log = logging.getLogger(__name__)

DEFAULTS = {
    "api_url": "https://api.osf.io/v2",
    "node": "kysnj",
    "provider": "osfstorage",
    "token_env": "OSF_TOKEN",
    "files": ["/Pancreas_MRI_Dataset/t1.zip", "/Pancreas_MRI_Dataset/t2.zip",
              "/Meta informations/*name_mapping.json", "/LICENSE.txt"],
    "pins": {},
    "extract": True,
    "keep_downloads": True,
}


@dataclass
class RemoteFile:
    path: str  # materialized_path, e.g. "/Meta informations/T1-name_mapping.json"
    size: int | None
    sha256: str | None
    md5: str | None
    url: str


def _segments(path: str) -> list[str]:
    return [s for s in path.strip("/").split("/") if s]


def matches(path: str, pattern: str) -> bool:
    p, q = _segments(path), _segments(pattern)
    return len(p) == len(q) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(p, q))


def may_hold(folder: str, pattern: str) -> bool:
    """Whether a folder (materialized path) can contain files matching `pattern`."""
    f, q = _segments(folder), _segments(pattern)
    return len(q) > len(f) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(f, q))


def _item_path(item) -> str:
    attrs = item.get("attributes", {})
    return attrs.get("materialized_path") or attrs.get("path") or "/" + attrs.get("name", "?")


def walk(session, url: str, patterns: list[str], policy, seen: list[str]) -> list[RemoteFile]:
    """Files under the listing at `url` (all pages) that match a pattern, descending folders."""
    found: list[RemoteFile] = []
    pages = 0
    while url:
        doc = get_json(session, url, policy)
        pages += 1
        if not isinstance(doc.get("data"), list):
            raise InputError(url, "an OSF listing without a 'data' list")
        for item in doc["data"]:
            attrs = item.get("attributes", {})
            path = _item_path(item)
            seen.append(path)
            if attrs.get("kind") == "folder":
                if any(may_hold(path, p) for p in patterns):
                    try:
                        child = item["relationships"]["files"]["links"]["related"]["href"]
                    except (KeyError, TypeError):
                        raise InputError(url, f"folder {path!r} has no relationships.files.links.related.href")
                    found += walk(session, child, patterns, policy, seen)
            elif any(matches(path, p) for p in patterns):
                hashes = (attrs.get("extra") or {}).get("hashes") or {}
                link = (item.get("links") or {}).get("download")
                if not link:
                    raise InputError(url, f"file {path!r} has no links.download")
                found.append(RemoteFile(path, attrs.get("size"), hashes.get("sha256"), hashes.get("md5"), link))
        url = (doc.get("links") or {}).get("next")
    log.debug("listing read in %d pages", pages)
    return found


def expected_for(f: RemoteFile, pin: dict | None) -> Expected:
    """The API's size and checksums, checked against a pin from config when there is one."""
    pin = pin or {}
    for key, api_value in (("size", f.size), ("sha256", f.sha256), ("md5", f.md5)):
        want = pin.get(key)
        if want is not None and api_value is not None and str(want).lower() != str(api_value).lower():
            raise InputError(f.path, f"OSF reports {key} {api_value} but config pins {want}: the file changed "
                                     "upstream (check it, then update or remove the pin)")
    exp = Expected(size=pin.get("size", f.size), sha256=pin.get("sha256", f.sha256), md5=pin.get("md5", f.md5))
    if not exp.has_checksum():
        raise InputError(f.path, "OSF lists no checksum for this file and config pins none; refusing an "
                                 "unverifiable download")
    return exp


def _describe_json(path: Path, label: str) -> None:
    """Log the size and a few entries of a name-mapping file (to set participant_regex)."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s: not readable as JSON (%s)", label, exc)
        return
    if isinstance(data, dict):
        sample = list(data.items())[:3]
        log.info("%s: %d entries, e.g. %s", label, len(data), "; ".join(f"{k!r} -> {v!r}" for k, v in sample))
    else:
        log.info("%s: a JSON %s of %d items", label, type(data).__name__, len(data))


def fetch(settings: dict, out, downloads, name: str = "osf") -> dict:
    s = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    out = Path(out)
    downloads = Path(downloads) if downloads else out.parent / f"{out.name}.downloads"
    policy = retry_policy(s)
    api = s["api_url"].rstrip("/")
    token = token_from_env(s.get("token_env"))
    check_token_transport(api, token)
    session = make_session(token)
    start = f"{api}/nodes/{s['node']}/files/{s['provider']}/"
    log.info("%s: listing OSF node %s (%s) for %s", name, s["node"], start, s["files"])
    seen: list[str] = []
    files = walk(session, start, list(s["files"]), policy, seen)
    for pattern in s["files"]:
        if not any(matches(f.path, pattern) for f in files):
            raise InputError(start, f"no file matches {pattern!r}; the node holds e.g. {sorted(seen)[:12]}")
    for pinned in s["pins"]:
        if not any(f.path == pinned for f in files):
            raise InputError(start, f"pins names {pinned!r}, which is not among the selected files")
    stems = [archive_stem(Path(f.path).name) for f in files if s["extract"] and is_archive_name(f.path)]
    if len(stems) != len(set(stems)):
        raise InputError(start, f"two archives would extract into the same folder: {sorted(stems)}")
    log.info("%s: %d files selected: %s", name, len(files), ", ".join(f"{f.path} ({f.size} B)" for f in files))

    expected = {f.path: expected_for(f, s["pins"].get(f.path)) for f in files}  # all checked before any download
    record, fetched = [], 0
    for f in files:
        exp = expected[f.path]
        local = downloads / f.path.lstrip("/")
        status = download(session, f.url, local, exp, policy, name=f.path.lstrip("/"))
        fetched += status == "downloaded"
        record.append({**asdict(f), "status": status, "verified_with": "sha256" if exp.sha256 else "md5"})
    origins = {}  # each file of <out> -> the OSF file (and archive member) it came from
    with atomic_dir(out) as tmp:
        for f in files:
            local = downloads / f.path.lstrip("/")
            if s["extract"] and is_archive_name(f.path):
                stem = archive_stem(local.name)
                for member in safe_extract(local, tmp / stem)["files"]:
                    origins[f"{stem}/{member}"] = f"{local} member {member} (OSF {f.path})"
            else:
                place_copy(local, tmp / f.path.lstrip("/"))
                origins[f.path.lstrip("/")] = f"{local} (OSF {f.path})"
                if local.suffix == ".json":
                    _describe_json(local, f.path)
        write_origins(tmp, origins)
        summary = {"source": name, "type": "osf", "api_url": api, "node": s["node"], "provider": s["provider"],
                   "patterns": list(s["files"]), "files": record}
        write_text(tmp / "download.json", json.dumps(summary, indent=1) + "\n")
    if not s["keep_downloads"]:
        for f in files:
            if s["extract"] and is_archive_name(f.path):
                (downloads / f.path.lstrip("/")).unlink(missing_ok=True)
                log.info("%s: removed the downloaded archive (keep_downloads: false)", f.path)
    log.info("%s: %d files downloaded, %d already present; %s ready", name, fetched, len(files) - fetched, out)
    return summary


def main():
    cli("Download PanSegData (or any OSF node's files) through the OSF API v2.", fetch)


if __name__ == "__main__":
    main()

__all__ = ["fetch", "walk", "matches", "may_hold", "DownloadError"]

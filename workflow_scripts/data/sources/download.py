"""Resumable, retried, checksum-verified HTTP downloads.

``download()`` writes ``<dest>.part``, resumes it with an HTTP Range request after a dropped
connection, retries connection errors, timeouts, 5xx and 429 answers with exponential backoff
(honouring Retry-After), checks the size and the sha256/md5 at the end and only then renames
``<dest>.part`` to ``<dest>``. A checksum mismatch is an error and removes the partial file, so
nothing at ``<dest>`` is ever unverified. A ``<dest>`` that already matches is not downloaded again.

Secrets: an access token travels in the session's Authorization header only. It is never put in
a URL, a message or a log line (requests drops the header itself on a redirect to another host).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
import urllib3

from workflow_scripts.common.errors import InputError
from workflow_scripts.common.files import file_digest, human_bytes

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRY_STATUS = {408, 425, 429}
USER_AGENT = "panseg-workflow (+https://github.com/; research data download)"


class DownloadError(InputError):
    """A download that failed for good: names the URL or file and what went wrong."""


class _Retryable(Exception):
    """A failure worth another try (dropped connection, 5xx, 429, short body)."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Expected:
    """What a downloaded file must be: size in bytes and checksums (hex), each optional."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None

    def has_checksum(self) -> bool:
        return bool(self.sha256 or self.md5)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 6  # further tries after the first, per download (reset whenever bytes arrive)
    backoff_s: float = 2.0  # first wait; doubles each time
    max_wait_s: float = 300.0  # cap on one wait, Retry-After included
    timeout_s: float = 60.0  # connect and read timeout of each request
    progress_s: float = 10.0  # seconds between progress lines in the log

    def wait(self, attempt: int, retry_after=None) -> float:
        if retry_after is not None:
            return min(float(retry_after), self.max_wait_s)
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_wait_s)


def make_session(token: str | None = None) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def check_token_transport(url: str, token: str | None) -> None:
    """Refuse to send a token in clear text (plain http), except to this machine (tests)."""
    parsed = urlparse(url)
    if token and parsed.scheme != "https" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise DownloadError(url, "refusing to send the access token over plain http")


def token_from_env(var: str | None) -> str | None:
    """The token held by environment variable `var` (None when unset or empty). Never logged."""
    if not var:
        return None
    value = os.environ.get(var, "").strip()
    if value:
        log.info("using the access token from environment variable %s", var)
    return value or None


def verify(path, expected: Expected) -> str | None:
    """None when `path` matches `expected`, else what is wrong (size first: it is cheap)."""
    size = Path(path).stat().st_size
    if expected.size is not None and size != expected.size:
        return f"size {size} bytes, expected {expected.size}"
    for algorithm in ("sha256", "md5"):
        want = getattr(expected, algorithm)
        if want:
            got = file_digest(path, algorithm)
            if got.lower() != want.lower():
                return f"{algorithm} {got}, expected {want}"
            return None  # the strongest checksum given has matched
    return None


def _retry_after(response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _status_problem(response, url: str) -> str:
    hint = ""
    if response.status_code in (401, 403):
        hint = " (a private node or file needs an access token: see the source's token_env)"
    elif response.status_code == 404:
        hint = " (check the node id / URL)"
    return f"HTTP {response.status_code} {response.reason or ''}".rstrip() + f" for {url}{hint}"


def get_json(session: requests.Session, url: str, policy: RetryPolicy, params=None) -> dict:
    """GET a JSON document, retrying like a download does."""
    attempt = 0
    while True:
        try:
            r = session.get(url, params=params, timeout=policy.timeout_s,
                            headers={"Accept": "application/vnd.api+json, application/json"})
            if r.status_code in RETRY_STATUS or r.status_code >= 500:
                raise _Retryable(f"HTTP {r.status_code}", _retry_after(r))
            if r.status_code >= 400:
                raise DownloadError(url, _status_problem(r, url))
            try:
                return r.json()
            except ValueError:
                raise DownloadError(url, "the answer is not JSON") from None
        except (requests.ConnectionError, requests.Timeout, _Retryable) as exc:
            attempt += 1
            if attempt > policy.retries:
                raise DownloadError(url, f"gave up after {policy.retries} retries ({exc})") from None
            wait = policy.wait(attempt, getattr(exc, "retry_after", None))
            log.warning("%s: %s; retry %d/%d in %.1f s", url, exc, attempt, policy.retries, wait)
            time.sleep(wait)


class _Progress:
    def __init__(self, name: str, total: int | None, start: int, every_s: float):
        self.name, self.total, self.done, self.every_s = name, total, start, every_s
        self.t0 = self.t_last = time.monotonic()
        self.received = 0

    def update(self, n: int, force: bool = False):
        self.done += n
        self.received += n
        now = time.monotonic()
        if force or now - self.t_last >= self.every_s:
            self.t_last = now
            rate = self.received / max(now - self.t0, 1e-6)
            if self.total:
                eta = (self.total - self.done) / rate if rate > 0 else float("inf")
                log.info("%s: %s / %s (%.1f%%) at %s/s, about %s left", self.name, human_bytes(self.done),
                         human_bytes(self.total), 100.0 * self.done / self.total, human_bytes(rate),
                         f"{eta:.0f} s" if eta != float("inf") else "?")
            else:
                log.info("%s: %s at %s/s", self.name, human_bytes(self.done), human_bytes(rate))


def _fetch_once(session, url, part: Path, expected: Expected, policy: RetryPolicy, name: str) -> int:
    """One request appending to `part`; returns the bytes received. Raises _Retryable or DownloadError."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # byte-exact transfer: sizes and Range offsets stay valid
    if have:
        headers["Range"] = f"bytes={have}-"
    with session.get(url, stream=True, timeout=policy.timeout_s, headers=headers) as r:
        if r.status_code == 416 and have:
            if expected.size is None:
                return 0  # nothing after `have`: the file is complete
            raise _Retryable(f"server has no bytes after offset {have} (expected {expected.size})")
        if r.status_code in RETRY_STATUS or r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code}", _retry_after(r))
        if r.status_code >= 400:
            raise DownloadError(url, _status_problem(r, url))
        mode = "ab"
        if have and r.status_code == 206:
            start = r.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(have):
                part.unlink()
                raise _Retryable(f"server resumed at {start!r} instead of byte {have}; starting again")
            log.info("%s: resuming at byte %d (%s)", name, have, human_bytes(have))
        elif have:
            log.warning("%s: server ignored the Range request (HTTP %d); starting again", name, r.status_code)
            have, mode = 0, "wb"
        if expected.size is None and r.headers.get("Content-Length") and r.status_code == 200:
            total = int(r.headers["Content-Length"])
        else:
            total = expected.size
        progress = _Progress(name, total, have, policy.progress_s)
        try:
            with open(part, mode) as f:
                while True:
                    block = r.raw.read(CHUNK, decode_content=False)
                    if not block:
                        break
                    f.write(block)
                    progress.update(len(block))
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
                raise  # a local write error (disk full): not the network's fault
            progress.update(0, force=True)
            raise _Retryable(f"connection lost after {progress.done} bytes ({type(exc).__name__})") from None
        progress.update(0, force=True)
        return progress.received


def download(session: requests.Session, url: str, dest, expected: Expected, policy: RetryPolicy = RetryPolicy(),
             name: str | None = None) -> str:
    """Download `url` to `dest` unless `dest` already matches; returns "downloaded" or "present"."""
    dest = Path(dest)
    name = name or dest.name
    if not expected.has_checksum() and expected.size is None:
        raise DownloadError(url, "no size and no checksum to verify the download against")
    if dest.exists():
        problem = verify(dest, expected)
        if problem is None:
            log.info("%s: already present and verified, not downloaded again", name)
            return "present"
        log.warning("%s: the file present does not match (%s); downloading it again", name, problem)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists() and expected.size is not None and part.stat().st_size > expected.size:
        part.unlink()
    attempt = 0
    t0 = time.monotonic()
    log.info("%s: downloading%s", name, f" {human_bytes(expected.size)}" if expected.size else "")
    while True:
        have = part.stat().st_size if part.exists() else 0
        if expected.size is not None and have == expected.size:
            break
        try:
            received = _fetch_once(session, url, part, expected, policy, name)
            size = part.stat().st_size if part.exists() else 0
            if expected.size is None or size == expected.size:
                break
            if size > expected.size:
                part.unlink()
                raise DownloadError(url, f"server sent {size} bytes, more than the expected {expected.size}; "
                                         "partial file removed")
            raise _Retryable(f"body ended after {size} of {expected.size} bytes ({received} received this time)")
        except (requests.ConnectionError, requests.Timeout, _Retryable) as exc:
            got_bytes = part.exists() and part.stat().st_size > have
            attempt = 1 if got_bytes else attempt + 1  # progress resets the count: a slow link still finishes
            if attempt > policy.retries:
                raise DownloadError(url, f"gave up after {policy.retries} retries without progress ({exc}); "
                                         f"the partial file {part} is kept for the next run to resume") from None
            wait = policy.wait(attempt, getattr(exc, "retry_after", None))
            log.warning("%s: %s; retry %d/%d in %.1f s", name, exc, attempt, policy.retries, wait)
            time.sleep(wait)
    problem = verify(part, expected)
    if problem is not None:
        part.unlink()
        # Named as the user knows it (the OSF path, the archive's name), with the URL it came from.
        raise DownloadError(name, f"downloaded from {url} but does not match: {problem}; it was removed")
    os.replace(part, dest)
    elapsed = time.monotonic() - t0
    log.info("%s: done and verified (%s in %.1f s)", name, human_bytes(dest.stat().st_size), elapsed)
    return "downloaded"

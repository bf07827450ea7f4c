"""A local stand-in for the OSF API v2 and its file downloads (127.0.0.1, a port of its own).

Serves a file tree the test builds: paginated listings (``links.next``), folders reached through
``relationships.files.links.related.href``, files with ``attributes.size``,
``attributes.extra.hashes`` and ``links.download``. Downloads honour ``Range: bytes=N-``. Faults
can be queued per file or per listing: an HTTP status (503, 429), a connection dropped after N
bytes, or a body that always ends early. Every request is recorded. The server stops at the end
of the test (fixture teardown) and in any case after `lifetime_s`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    kind: str  # "list" or "download"
    path: str  # URL path
    target: str  # OSF path of the file or folder
    range_start: int | None
    status: int
    bytes_sent: int = 0
    auth: str | None = None


@dataclass
class FakeOSF:
    node: str = "kysnj"
    page_size: int = 2
    lifetime_s: float = 120.0
    files: dict = field(default_factory=dict)  # OSF path -> bytes
    meta: dict = field(default_factory=dict)  # OSF path -> overrides of size / sha256 / md5 in listings
    faults: dict = field(default_factory=dict)  # OSF path -> list of faults, one consumed per download
    truncate: dict = field(default_factory=dict)  # OSF path -> bytes actually served, always
    listing_faults: list = field(default_factory=list)  # statuses for the next listing requests
    requests: list = field(default_factory=list)

    # ---- tree ----------------------------------------------------------------------------
    def add(self, path: str, data: bytes) -> None:
        assert path.startswith("/")
        self.files[path] = data

    def _folders(self) -> list[str]:
        out = set()
        for p in self.files:
            parts = p.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                out.add("/" + "/".join(parts[:i]) + "/")
        return sorted(out)

    def _folder_id(self, folder: str) -> str:
        return "fold" + hashlib.md5(folder.encode()).hexdigest()[:8]

    def _file_id(self, path: str) -> str:
        return "file" + hashlib.md5(path.encode()).hexdigest()[:8]

    def _children(self, folder: str) -> list[dict]:
        depth = folder.count("/")
        items = []
        for sub in self._folders():
            if sub.startswith(folder) and sub.count("/") == depth + 1:
                fid = self._folder_id(sub)
                items.append({
                    "id": fid, "type": "files",
                    "attributes": {"kind": "folder", "name": sub.strip("/").split("/")[-1],
                                   "materialized_path": sub, "path": f"/{fid}/"},
                    "relationships": {"files": {"links": {"related": {
                        "href": f"{self.base}/v2/nodes/{self.node}/files/osfstorage/{fid}/"}}}},
                })
        for path, data in sorted(self.files.items()):
            if path.startswith(folder) and path.count("/") == depth:
                meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "md5": hashlib.md5(data).hexdigest(), **self.meta.get(path, {})}
                items.append({
                    "id": self._file_id(path), "type": "files",
                    "attributes": {"kind": "file", "name": path.split("/")[-1], "materialized_path": path,
                                   "size": meta["size"],
                                   "extra": {"hashes": {"md5": meta["md5"], "sha256": meta["sha256"]}}},
                    "links": {"download": f"{self.base}/download/{self._file_id(path)}"},
                })
        return items

    # ---- server --------------------------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    fake._handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api = f"{self.base}/v2"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(self.lifetime_s, self.stop)
        self.timer.daemon = True
        self.timer.start()
        return self.api

    def stop(self) -> None:
        if getattr(self, "server", None) is not None:
            server, self.server = self.server, None
            server.shutdown()
            server.server_close()
            self.timer.cancel()

    def downloads(self, target=None) -> list[Request]:
        return [r for r in self.requests if r.kind == "download" and (target is None or r.target == target)]

    def _send(self, h, status, body=b"", headers=None):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h) -> None:
        url = urlparse(h.path)
        auth = h.headers.get("Authorization")
        prefix = f"/v2/nodes/{self.node}/files/osfstorage/"
        if url.path.startswith("/v2/"):
            if not url.path.startswith(prefix):
                self.requests.append(Request("list", url.path, "?", None, 404, auth=auth))
                return self._send(h, 404, b'{"errors": [{"detail": "Not found."}]}')
            rest = url.path[len(prefix):].strip("/")
            folder = "/" if not rest else next((f for f in self._folders() if self._folder_id(f) == rest), None)
            if folder is None:
                return self._send(h, 404, b"{}")
            if self.listing_faults:
                status = self.listing_faults.pop(0)
                self.requests.append(Request("list", url.path, folder, None, status, auth=auth))
                return self._send(h, status, b"busy", {"Retry-After": "0"})
            page = int(parse_qs(url.query).get("page", ["1"])[0])
            children = self._children(folder)
            chunk = children[(page - 1) * self.page_size: page * self.page_size]
            more = page * self.page_size < len(children)
            doc = {"data": chunk, "links": {"next": f"{self.base}{url.path}?page={page + 1}" if more else None,
                                            "meta": {"total": len(children), "per_page": self.page_size}}}
            self.requests.append(Request("list", h.path, folder, None, 200, auth=auth))
            return self._send(h, 200, json.dumps(doc).encode(), {"Content-Type": "application/vnd.api+json"})
        if url.path.startswith("/download/"):
            fid = url.path.split("/")[2]
            path = next((p for p in self.files if self._file_id(p) == fid), None)
            if path is None:
                return self._send(h, 404, b"no such file")
            data = self.files[path][: self.truncate.get(path, len(self.files[path]))]
            rng = h.headers.get("Range")
            start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else None
            rec = Request("download", url.path, path, start, 200, auth=auth)
            self.requests.append(rec)
            fault = self.faults.get(path, []).pop(0) if self.faults.get(path) else None
            if fault and fault[0] == "status":
                rec.status = fault[1]
                return self._send(h, fault[1], b"try later", {"Retry-After": "0"})
            if start is not None and start >= len(data):
                rec.status = 416
                return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            body = data[start or 0:]
            status = 206 if start is not None else 200
            rec.status = status
            h.send_response(status)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(len(body)))
            if status == 206:
                h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            h.send_header("Accept-Ranges", "bytes")
            h.end_headers()
            if fault and fault[0] == "drop":
                body = body[: fault[1]]  # then the connection closes before Content-Length is reached
            h.wfile.write(body)
            h.wfile.flush()
            rec.bytes_sent = len(body)
            return None
        return self._send(h, 404, b"unknown path")


class StaticServer(FakeOSF):
    """Serves `files` at <base>/<name> (plain URLs, for the url source)."""

    def url(self, path: str) -> str:
        return f"{self.base}/download/{self._file_id(path)}"

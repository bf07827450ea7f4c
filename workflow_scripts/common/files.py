"""File digests and human-readable sizes: one implementation for downloads, bundles and imports."""

from __future__ import annotations

import hashlib

CHUNK = 1 << 20  # read 1 MiB at a time: checkpoints and archives are large


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (any hashlib algorithm: sha256, md5, ...)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"

"""A folder the user already has, in nnU-Net raw, Decathlon or PanSegData layout.

    python -m workflow_scripts.sources.local --out data/raw/nih \\
        --settings '{"path": "data/local/nih_pancreas_ct", "layout": "decathlon", "center": "NIH",
                     "drop_cases": [25, 70]}'

Nothing in the user's folder is changed: files are linked (absolute symbolic links, ``mode:
link``, the default) or copied (``mode: copy``) into ``<out>``; labels that need merging
(``foreground_labels``) are written anew. PanSegData-layout folders are mirrored as they are,
zip/tar files in them extracted (t1.zip -> t1/). See layout.py for the conversion rules.
"""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.common.errors import InputError
from workflow_scripts.data.sources.common import cli
from workflow_scripts.data.sources.layout import import_dataset


def fetch(settings: dict, out, downloads=None, name: str = "local") -> dict:
    src = Path(settings["path"]).expanduser()
    if not src.is_dir():
        raise InputError(src, f"source {name!r}: folder does not exist (set sources.{name}.path)")
    return import_dataset(src, out, layout=settings.get("layout", "auto"), center=settings.get("center"),
                          foreground_labels=settings.get("foreground_labels"), drop_cases=settings.get("drop_cases"),
                          mode=settings.get("mode", "link"), source_name=name)


def main():
    cli("Import a local dataset folder in the PanSegData raw layout.", fetch)


if __name__ == "__main__":
    main()

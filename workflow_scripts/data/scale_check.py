"""Dry-run a study-scale configuration without its data, and time the DAG.

The workflow's DAG comes from the config (modalities, centers, models, folds) plus, once a center
is prepared, the files its table lists. This writes, in a scratch working directory, per-center
tables of the study's size whose image/label files are empty placeholders, then times
``snakemake -n`` on it: the same DAG the real study builds after preparation, without 2,117 scans.

    python -m workflow_scripts.scale_check --configfile config/paper.yaml --workdir /tmp/scale \\
        --scans T1=385 T2=382 CT=1350
Scans of a modality are spread evenly over its centers. Extra CT centers (beyond the config's)
can be added with --extra-center CT:AC1K to reach the study's 1,350 CTs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from workflow_scripts.common.provenance import WORKFLOW_ROOT as REPO
from workflow_scripts.data.prepare import MANIFEST_COLUMNS


def fake_tables(cfg: dict, workdir: Path, scans: dict[str, int]) -> int:
    data = workdir / cfg.get("data_dir", "data")
    total = 0
    for modality, mc in cfg["modalities"].items():
        centers = list(mc["train_centers"]) + list(mc.get("external_centers", []))
        n_total = scans.get(modality, 10 * len(centers))
        for i, center in enumerate(centers):
            n = n_total // len(centers) + (i < n_total % len(centers))
            rows = []
            for k in range(1, n + 1):
                case = f"{center}_{k:04d}"
                image = data / "placeholder" / modality / f"{case}_0000.nii.gz"
                label = data / "placeholder" / modality / f"{case}.nii.gz"
                rows.append(dict(case_id=case, modality=modality, center=center, participant_id=case,
                                 image=str(image.relative_to(workdir)), label=str(label.relative_to(workdir)),
                                 role="train-cv" if center in mc["train_centers"] else "external",
                                 data_source="placeholder", spacing="1x1x1", label_voxels=1, notes=""))
            (data / "placeholder" / modality).mkdir(parents=True, exist_ok=True)
            for r in rows:
                (workdir / r["image"]).touch()
                (workdir / r["label"]).touch()
            out = data / "prepared" / modality / f"{center}.tsv"
            out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).reindex(columns=MANIFEST_COLUMNS).to_csv(out, sep="\t", index=False)
            total += n
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--scans", nargs="*", default=[], help="MODALITY=N (total scans of a modality)")
    ap.add_argument("--extra-center", nargs="*", default=[], help="MODALITY:CENTER added as an external local center")
    args = ap.parse_args(argv)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(Path(args.configfile).read_text())
    for spec in args.extra_center:
        modality, center = spec.split(":")
        folder = work / "extra" / center
        folder.mkdir(parents=True, exist_ok=True)
        cfg["sources"][center.lower()] = {"type": "local", "path": str(folder), "layout": "panseg", "center": center}
        cfg["modalities"][modality].setdefault("center_sources", {})[center] = center.lower()
        cfg["modalities"][modality].setdefault("external_centers", []).append(center)
    # Local sources must exist to be dry-run; their contents do not matter here.
    for source in cfg["sources"].values():
        if source["type"] == "local":
            path = Path(source["path"])
            (path if path.is_absolute() else work / path).mkdir(parents=True, exist_ok=True)
    cfg_path = work / "scale_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    n = fake_tables(cfg, work, {k: int(v) for k, v in (s.split("=") for s in args.scans)})
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--quiet", "rules",
                           "--configfile", str(cfg_path), "--directory", str(work)],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        return proc.returncode
    print(proc.stdout.strip())
    print(f"\n{n} scans (placeholders); dry-run wall time {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

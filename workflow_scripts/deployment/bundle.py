"""Portable model bundles: export a trained model as one archive, verify it, extract it safely.

A bundle is one uncompressed tar holding everything prediction needs and nothing executable,
under one top folder named like the archive (``panseg_<modality>_<model>/``)::

    bundle.json                 what it is: trainer import path, configuration, folds, inference
                                defaults (mirroring, step size), labels, versions, workflow commit
    plans.json                  nnU-Net plans (incl. ``panseg_network``, e.g. PanSegNet's transformer)
    dataset.json                dataset description (channels, labels, reader NibabelIOWithReorient)
    dataset_fingerprint.json    the preprocessing fingerprint (intensity statistics, spacings)
    fold_<k>/checkpoint_final.pth   one per fold (the ensemble)
    fold_<k>/train_info.json    training budget and validation Dice of the fold, where present
    SHA256SUMS                  sha256 of every other file (``sha256sum -c`` format)

The archive is byte-reproducible: members sorted, mtime 0, no owner names. Reading a bundle
refuses, naming the bundle and the member: absolute paths, ``..``, links of any kind, devices,
duplicate names, names outside the top folder, a file missing from or not listed in SHA256SUMS,
and any file whose sha256 differs from the manifest. Checkpoints are later loaded with
``torch.load(weights_only=True)`` (``predict.load_checkpoint``): no pickled code runs. The trainer
named in bundle.json is imported from the installed packages; the bundle carries no code.

    python -m workflow_scripts.bundle export --model-folder DIR --checkpoints F0 F1 ... --trainer M:C \
        --configuration 3d_fullres --modality T1 --model nnunet --out B.tar
    python -m workflow_scripts.bundle verify B.tar      # checks every sha256, prints bundle.json
    python -m workflow_scripts.bundle import-v1 --model-dir <v1 Trainer__Plans folder> [--plans plans.pkl] \
        --modality T1 --model pansegnet --out B.tar      # a trained nnU-Net v1 model (v1_import.py)
    python -m workflow_scripts.bundle predict --bundle B.tar --cases cases.tsv --out DIR   # bundle_predict.py
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import platform
import re
import shutil
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.common.atomic import atomic_path
from workflow_scripts.common.errors import InputError
from workflow_scripts.common.files import sha256_file
from workflow_scripts.common.provenance import git_state, package_version
from workflow_scripts.common.safe_archive import member_name, read_top_member

log = logging.getLogger(__name__)

FORMAT = "panseg-bundle"
FORMAT_VERSION = 1  # what export writes
# Bundles imported from nnU-Net v1 are format 2: they need v1's inference semantics, which a reader
# of format 1 does not know (it would give close but different masks), so it refuses them.
READ_FORMAT_VERSION = 2
SEMANTICS = ("v2", "v1")  # inference_semantics: nnU-Net v2's predictor order / nnU-Net v1's (v1_inference.py)
INFO = "bundle.json"
MANIFEST = "SHA256SUMS"
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
MAX_MEMBERS = 1000
CHUNK = 1 << 20


class BundleError(InputError):
    """A bundle that cannot be used; the message names the bundle file and the problem."""


@dataclass
class Bundle:
    """An extracted, verified bundle."""

    archive: Path
    root: Path  # the extracted top folder
    info: dict
    sha256: str  # of the archive file itself

    @property
    def checkpoints(self) -> list[Path]:
        return [self.root / c for c in self.info["checkpoints"]]


# ---- export ---------------------------------------------------------------------------------
def workflow_commit(repo=None) -> dict:
    """The workflow's git commit (and whether tracked files differ from it), or nulls outside git."""
    state = git_state(repo)
    return {"commit": state["commit"] or None, "dirty": state["dirty"]} if state else {"commit": None, "dirty": None}


def software_versions() -> dict:
    """Versions of what made (or reads) a bundle; metadata only, nothing heavy is imported."""
    git = workflow_commit()
    return {"python": platform.python_version(), "torch": package_version("torch"), "nnunetv2": package_version("nnunetv2"),
            "SimpleITK": package_version("SimpleITK"), "workflow": package_version("panseg-workflow"),
            "workflow_commit": git["commit"], "workflow_dirty": git["dirty"]}


def _fold_of(checkpoint: Path) -> int:
    m = re.fullmatch(r"fold_(\d+)", checkpoint.parent.name)
    if not m or checkpoint.name != "checkpoint_final.pth":
        raise InputError(checkpoint, "expected <model folder>/fold_<k>/checkpoint_final.pth")
    return int(m.group(1))


def bundle_info(name: str, model_folder: Path, checkpoints: list[Path], trainer: str, configuration: str,
                modality: str, model: str, mirroring: bool, step_size: float) -> dict:
    plans = json.loads((model_folder / "plans.json").read_text())
    dataset = json.loads((model_folder / "dataset.json").read_text())
    if configuration not in plans.get("configurations", {}):
        raise InputError(model_folder / "plans.json", f"has no configuration {configuration!r}")
    conf = plans["configurations"][configuration]
    training = []
    for ck in checkpoints:
        info_file = ck.parent / "train_info.json"
        if info_file.exists():
            ti = json.loads(info_file.read_text())
            training.append({k: ti.get(k) for k in ("fold", "epochs", "iterations_per_epoch", "optimizer", "initial_lr",
                                                    "seed", "validation_mean_dice", "n_validation_cases")})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "modality": modality,
        "model": model,
        "trainer": trainer,
        "configuration": configuration,
        "folds": [_fold_of(ck) for ck in checkpoints],
        "checkpoints": [f"fold_{_fold_of(ck)}/checkpoint_final.pth" for ck in checkpoints],
        "inference": {"mirroring": bool(mirroring), "step_size": float(step_size)},
        "inference_semantics": "v2",
        "labels": dataset.get("labels"),
        "channels": dataset.get("channel_names"),
        "reader": dataset.get("overwrite_image_reader_writer"),
        "plan": {"spacing_mm_zyx": conf.get("spacing"), "patch_size": conf.get("patch_size"),
                 "features_per_stage": conf.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage")},
        "network": plans.get("panseg_network", {}),
        "training": training,
        "versions": software_versions(),
    }


class _HashingReader:
    """File-like wrapper that hashes what tarfile reads, so the manifest is of the archived bytes."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.h.update(data)
        return data


def _add(tf: tarfile.TarFile, name: str, src: Path | bytes) -> str:
    """Add one file with fixed metadata (reproducible archive); return its sha256."""
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0o644, 0, 0, "", ""
    if isinstance(src, bytes):
        ti.size = len(src)
        reader = _HashingReader(io.BytesIO(src))
        tf.addfile(ti, reader)
        return reader.h.hexdigest()
    with open(src, "rb") as f:
        ti.size = Path(src).stat().st_size
        reader = _HashingReader(f)
        tf.addfile(ti, reader)  # tarfile reads exactly ti.size bytes (a file that shrank is an error)
        return reader.h.hexdigest()


def export_bundle(model_folder, checkpoints, trainer: str, configuration: str, modality: str, model: str, out,
                  mirroring: bool = False, step_size: float = 0.5) -> Path:
    """Write the bundle archive `out` (atomically) from a trained nnU-Net model folder."""
    model_folder, out = Path(model_folder), Path(out)
    checkpoints = sorted((Path(c) for c in checkpoints), key=_fold_of)
    if not checkpoints:
        raise InputError(model_folder, "no checkpoints given")
    for ck in checkpoints:
        if ck.resolve().parent.parent != model_folder.resolve():
            raise InputError(ck, f"is not a fold checkpoint of {model_folder}")
        if not ck.is_file():
            raise InputError(ck, "file does not exist")
    for f in MODEL_FILES:
        if not (model_folder / f).is_file():
            raise InputError(model_folder / f, "file does not exist (nnU-Net writes it when training starts)")
    name = check_bundle_name(out)
    info = bundle_info(name, model_folder, checkpoints, trainer, configuration, modality, model, mirroring, step_size)
    files: dict[str, Path | bytes] = {INFO: info_bytes(info)}
    for f in MODEL_FILES:
        files[f] = model_folder / f
    for ck in checkpoints:
        files[f"fold_{_fold_of(ck)}/checkpoint_final.pth"] = ck
        if (ck.parent / "train_info.json").exists():
            files[f"fold_{_fold_of(ck)}/train_info.json"] = ck.parent / "train_info.json"
    write_archive(out, name, files)
    log.info("%s: %d folds, %d files, %.1f MB", out, len(checkpoints), len(files) + 1, out.stat().st_size / 1e6)
    return out


def info_bytes(info: dict) -> bytes:
    return (json.dumps(info, indent=1, sort_keys=True) + "\n").encode()


def check_bundle_name(out: Path) -> str:
    name = out.name.removesuffix(".tar")
    if not out.name.endswith(".tar") or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise InputError(out, "a bundle is named <name>.tar, the name of letters, digits, '.', '_' and '-'")
    return name


def write_archive(out: Path, name: str, files: dict[str, Path | bytes]) -> None:
    """Write the reproducible archive `out` atomically: `files` (bundle-relative name -> file or bytes)
    under the top folder `name`, then SHA256SUMS over all of them."""
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            sums = {rel: _add(tf, f"{name}/{rel}", files[rel]) for rel in sorted(files)}
            manifest = "".join(f"{sums[rel]}  {rel}\n" for rel in sorted(sums))
            _add(tf, f"{name}/{MANIFEST}", manifest.encode())


# ---- reading --------------------------------------------------------------------------------
def _check_members(archive: Path, members: list[tarfile.TarInfo]) -> str:
    """Refuse unsafe or unexpected members before anything is written; return the top folder."""
    if len(members) > MAX_MEMBERS:
        raise BundleError(archive, f"has {len(members)} members; a bundle has a few dozen")
    seen, tops = set(), set()
    for m in members:
        raw = m.name
        try:
            name = member_name(archive, raw) or ""  # absolute paths and '..' (common.safe_archive)
        except InputError as exc:
            raise BundleError(archive, exc.problem) from None
        parts = name.split("/")
        if m.issym() or m.islnk():
            raise BundleError(archive, f"member {raw!r} is a link (to {m.linkname!r}); bundles hold only plain files")
        if not (m.isfile() or m.isdir()):
            raise BundleError(archive, f"member {raw!r} is a device, FIFO or other special file; refusing to extract")
        if not name or "\\" in raw or not SAFE_NAME.match(name):
            raise BundleError(archive, f"member {raw!r}: names may hold only letters, digits, '.', '_', '-' and '/'")
        if m.isfile():
            if name in seen:
                raise BundleError(archive, f"member {name!r} appears twice; refusing an ambiguous bundle")
            seen.add(name)
            if "/" not in name:
                raise BundleError(archive, f"member {name!r} is outside the bundle's top folder")
        tops.add(parts[0])
    if len(tops) != 1:
        raise BundleError(archive, f"expected one top folder, found {sorted(tops) or 'none'}")
    return tops.pop()


def _parse_manifest(archive: Path, text: str) -> dict[str, str]:
    sums = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](\S+)", line.strip())
        if not m:
            raise BundleError(archive, f"{MANIFEST} line {i} is not '<sha256>  <file>': {line[:80]!r}")
        sums[m.group(2)] = m.group(1)
    return sums


def extract(archive, dest) -> Bundle:
    """Extract a bundle into the folder `dest` and verify it; raise BundleError naming the problem.

    Every member is checked before anything is written; the sha256 of every file is computed while
    it is written and compared with SHA256SUMS; a refused bundle leaves nothing in `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise BundleError(archive, "bundle file does not exist")
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(archive, f"is not a readable tar archive ({exc})") from None
    written = []
    try:
        with tf:
            members = tf.getmembers()
            top = _check_members(archive, members)
            if (dest / top).exists():
                raise BundleError(dest / top, "extraction target exists already")
            dest.mkdir(parents=True, exist_ok=True)
            digests = {}
            for m in members:
                if not m.isfile():
                    continue
                rel = "/".join(p for p in m.name.split("/") if p not in ("", "."))[len(top) + 1:]
                target = dest / top / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                src = tf.extractfile(m)
                with src, open(target, "xb") as out:
                    written.append(target)
                    for block in iter(lambda: src.read(CHUNK), b""):
                        h.update(block)
                        out.write(block)
                digests[rel] = h.hexdigest()
        root = dest / top
        _verify_digests(archive, root, digests)
        info = _read_info(archive, root)
    except (tarfile.TarError, EOFError) as exc:
        _remove(dest, written)
        raise BundleError(archive, f"is damaged ({type(exc).__name__}: {exc})") from None
    except BaseException:
        _remove(dest, written)
        raise
    return Bundle(archive=archive, root=root, info=info, sha256=sha256_file(archive))


def _remove(dest: Path, written: list[Path]) -> None:
    for p in written:
        p.unlink(missing_ok=True)
    for d in sorted({p.parent for p in written}, key=lambda p: len(p.parts), reverse=True):
        while d != dest and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent


def _verify_digests(archive: Path, root: Path, digests: dict[str, str]) -> None:
    if MANIFEST not in digests:
        raise BundleError(archive, f"has no {MANIFEST}: cannot verify its contents")
    expected = _parse_manifest(archive, (root / MANIFEST).read_text(errors="replace"))
    files = set(digests) - {MANIFEST}
    missing = sorted(set(expected) - files)
    if missing:
        raise BundleError(archive, f"{', '.join(missing)}: listed in {MANIFEST} but missing from the bundle")
    unlisted = sorted(files - set(expected))
    if unlisted:
        raise BundleError(archive, f"{', '.join(unlisted)}: in the bundle but not listed in {MANIFEST}; "
                                   "refusing an altered bundle")
    changed = [rel for rel in sorted(files) if digests[rel] != expected[rel]]
    if changed:
        rel = changed[0]
        raise BundleError(archive, f"{', '.join(changed)}: sha256 does not match {MANIFEST} (first: {rel} has "
                                   f"{digests[rel][:16]}..., expected {expected[rel][:16]}...); the bundle was "
                                   "altered or damaged")


def _read_info(archive: Path, root: Path) -> dict:
    try:
        info = json.loads((root / INFO).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(archive, f"{INFO} cannot be read ({exc})") from None
    if info.get("format") != FORMAT or not isinstance(info.get("format_version"), int):
        raise BundleError(archive, f"{INFO} does not describe a {FORMAT}")
    if info["format_version"] > READ_FORMAT_VERSION:
        raise BundleError(archive, f"bundle format {info['format_version']} is newer than this workflow reads "
                                   f"({READ_FORMAT_VERSION}); update the workflow")
    if inference_semantics(info) not in SEMANTICS:
        raise BundleError(archive, f"{INFO}: inference_semantics {info['inference_semantics']!r} is not one of "
                                   f"{', '.join(SEMANTICS)}")
    for key in ("trainer", "configuration", "checkpoints", "inference"):
        if key not in info:
            raise BundleError(archive, f"{INFO} lacks {key!r}")
    for rel in [*MODEL_FILES, *info["checkpoints"]]:
        if not (root / rel).is_file():
            raise BundleError(archive, f"{rel}: named by {INFO} but missing from the bundle")
    return info


def read_info(archive) -> dict:
    """bundle.json of a bundle without extracting it (metadata only: nothing else is read or checked)."""
    try:
        return json.loads(read_top_member(archive, INFO))
    except InputError as exc:
        raise BundleError(archive, exc.problem) from None
    except ValueError as exc:
        raise BundleError(archive, f"{INFO} cannot be read ({exc})") from None


def inference_semantics(info: dict) -> str:
    """How a bundle's model must be run: "v2" (nnU-Net v2's predictor; bundles without the field, made
    before it existed, are native ones) or "v1" (models imported from nnU-Net v1)."""
    return info.get("inference_semantics", "v2")


@contextmanager
def opened(archive, workdir=None):
    """Extract and verify a bundle into a temporary folder; remove it afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="panseg-bundle-", dir=workdir))
    try:
        yield extract(archive, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def version_differences(info: dict, here: dict | None = None) -> list[str]:
    """Differences between the software that made a bundle and the one reading it (`here`, by
    default software_versions()): warnings."""
    here = here or software_versions()
    return [f"{k} {info['versions'].get(k)} (bundle) vs {here[k]} (here)" for k in ("torch", "nnunetv2")
            if info.get("versions", {}).get(k) and here[k] and info["versions"][k] != here[k]]


# ---- command line ---------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export or verify a PanSeg model bundle.")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a bundle from a trained model folder")
    ex.add_argument("--model-folder", required=True, help="nnU-Net folder with plans.json, dataset.json, fold_<k>/")
    ex.add_argument("--checkpoints", nargs="+", required=True, help="fold_<k>/checkpoint_final.pth files")
    ex.add_argument("--trainer", required=True, help="trainer import path module:Class")
    ex.add_argument("--configuration", required=True)
    ex.add_argument("--modality", required=True)
    ex.add_argument("--model", required=True)
    ex.add_argument("--mirroring", action=argparse.BooleanOptionalAction, default=False,
                    help="default test-time mirroring of the bundle (the workflow's inference.mirroring)")
    ex.add_argument("--step-size", type=float, default=0.5)
    ex.add_argument("--out", required=True, help="the archive, <name>.tar")
    ve = sub.add_parser("verify", help="check every file of a bundle against its manifest; print bundle.json")
    ve.add_argument("bundle")
    im = sub.add_parser("import-v1", help="write a bundle from a trained nnU-Net v1 model folder (docs/released_weights.md)")
    im.add_argument("--model-dir", required=True, help="the v1 trainer folder, <Trainer>__nnUNetPlansv2.1, with fold_<k>/")
    im.add_argument("--plans", help="v1 plans pickle, used only when the folder has neither plans.pkl nor plans in "
                                    "fold_<k>/model_final_checkpoint.model.pkl")
    im.add_argument("--modality", required=True)
    im.add_argument("--model", required=True, help="the model's name in the catalog (recorded in bundle.json)")
    im.add_argument("--mirroring", action=argparse.BooleanOptionalAction, default=True,
                    help="default test-time mirroring of the bundle (default on, as nnU-Net v1's predictor)")
    im.add_argument("--step-size", type=float, default=0.5)
    im.add_argument("--out", required=True, help="the archive, <name>.tar")
    pr = sub.add_parser("predict", help="segment the scans of a table (columns case_id, image) with a bundle")
    pr.add_argument("--bundle", required=True)
    pr.add_argument("--cases", required=True, help="TSV with columns case_id and image")
    pr.add_argument("--out", required=True, help="folder for <case_id>.nii.gz")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pr.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")
    pr.add_argument("--mirroring", action=argparse.BooleanOptionalAction, default=None,
                    help="test-time mirroring (default: the bundle's)")
    pr.add_argument("--step-size", type=float, help="sliding-window step as a fraction of the patch (default: bundle's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.command == "import-v1":
            from workflow_scripts.deployment.v1_import import import_v1

            import_v1(args.model_dir, args.out, args.modality, args.model, args.plans, args.mirroring, args.step_size)
        elif args.command == "predict":
            from workflow_scripts.deployment.bundle_predict import predict_table

            predict_table(args.bundle, args.cases, args.out, args.device, args.threads, args.mirroring, args.step_size)
        elif args.command == "export":
            export_bundle(args.model_folder, args.checkpoints, args.trainer, args.configuration, args.modality,
                          args.model, args.out, args.mirroring, args.step_size)
        else:
            with opened(args.bundle) as b:
                print(json.dumps({"bundle": str(b.archive), "sha256": b.sha256, **b.info}, indent=1))
                n = sum(1 for f in b.root.rglob("*") if f.is_file()) - 1
                log.info("%s: verified, all %d files match %s", b.archive, n, MANIFEST)
    except (InputError, RuntimeError) as exc:  # RuntimeError: e.g. --device cuda without a GPU
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":  # nnU-Net may start worker processes with spawn: keep this guard
    sys.exit(main())

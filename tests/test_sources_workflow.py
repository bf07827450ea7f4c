"""Snakemake from nothing to a validated manifest with real-data sources (local servers only)."""

import hashlib
import shutil

import pandas as pd
import pytest
import yaml

from fake_osf import StaticServer
from helpers import REPO, job_counts, snakemake
from source_data import case_pair, decathlon_tree, osf_settings, study_server, tar_folder

TAR = "/Task07_Pancreas.tar"


@pytest.fixture
def servers(tmp_path):
    osf, _ = study_server(tmp_path)
    decathlon_tree(tmp_path / "build_msd")
    msd = StaticServer()
    msd.add(TAR, tar_folder(tmp_path / "build_msd"))
    osf.start()
    msd.start()
    yield osf, msd
    osf.stop()
    msd.stop()


def study_config(tmp_path, osf, msd) -> dict:
    nih = tmp_path / "nih_nifti"
    for n in (1, 2, 25):
        case_pair(nih / "imagesTr" / f"PANCREAS_{n:04d}.nii.gz", nih / "labelsTr" / f"PANCREAS_{n:04d}.nii.gz", seed=n)
    data = msd.files[TAR]
    regex = r"^(?P<participant>[A-Z]+-P\d+)-V\d+$"
    return {
        "study": "sources-test",
        "sources": {
            "osf": {"type": "osf", **osf_settings(osf)},
            "msd": {"type": "url", "url": msd.url(TAR), "md5": hashlib.md5(data).hexdigest(), "size": len(data),
                    "filename": "Task07_Pancreas.tar", "layout": "decathlon", "center": "MSD",
                    "foreground_labels": [1, 2], "retries": 2, "backoff_s": 0.01, "timeout_s": 5},
            "nih": {"type": "local", "path": str(nih), "layout": "decathlon", "center": "NIH", "drop_cases": [25]},
        },
        "modalities": {
            "CT": {"source": "msd", "center_sources": {"NIH": "nih"}, "mapping": "name_mapping.json",
                   "dataset_id": 109, "train_centers": ["MSD"], "external_centers": ["NIH"]},
            "T1": {"source": "osf", "folder": "t1", "mapping": "Meta informations/T1-name_mapping.json",
                   "participant_regex": regex, "dataset_id": 110, "train_centers": ["AHN"],
                   "external_centers": ["MCF"]},
            "T2": {"source": "osf", "folder": "t2", "mapping": "Meta informations/T2-name_mapping.json",
                   "participant_regex": regex, "dataset_id": 111, "train_centers": ["NYU"]},
        },
        "prepare": {"on_bad_case": "error", "label_header_mismatch": "use_image"},
        "models": ["nnunet"],
    }


@pytest.mark.workflow  # runs Snakemake
def test_download_prepare_manifest(servers, tmp_path):
    osf, msd = servers
    work = tmp_path / "work"
    work.mkdir()
    cfg = work / "study.yaml"
    cfg.write_text(yaml.safe_dump(study_config(tmp_path, osf, msd)))
    dry = snakemake("data/manifest.tsv", "-n", "--configfile", str(cfg), workdir=work, timeout=120)
    counts = job_counts(dry.stdout)
    assert counts == {"osf_source": 1, "url_source": 1, "local_source": 1, "prepare_center": 5, "manifest": 1}
    assert osf.requests == [] and msd.requests == []  # a dry run touches no server

    snakemake("data/manifest.tsv", "--cores", "2", "--configfile", str(cfg), workdir=work, timeout=180)
    m = pd.read_csv(work / "data" / "manifest.tsv", sep="\t", keep_default_na=False)
    assert m.groupby(["modality", "center"]).size().to_dict() == {
        ("CT", "MSD"): 3, ("CT", "NIH"): 2, ("T1", "AHN"): 2, ("T1", "MCF"): 2, ("T2", "NYU"): 2}
    assert m.set_index("case_id").loc["NIH_0002", "data_source"] == "nih"
    assert set(m[m.modality == "T1"].data_source) == {"osf"}
    assert m[m.modality == "T1"].participant_id.tolist() == ["AHN-P1", "AHN-P2", "MCF-P1", "MCF-P2"]
    assert set(m[m.center == "MSD"].participant_id) == {"pancreas_001", "pancreas_004", "pancreas_007"}
    log = (work / "data" / "logs" / "source_osf.log").read_text(encoding="utf-8")
    assert "done and verified" in log and "%)" in log  # progress with bytes and percentage
    n_downloads = len(osf.downloads()) + len(msd.downloads())

    again = snakemake("data/manifest.tsv", "--cores", "2", "--configfile", str(cfg), workdir=work, timeout=120)
    assert "Nothing to be done" in again.stdout + again.stderr
    # even a forced re-run of the sources downloads nothing: the cache is verified and reused
    snakemake("data/raw/osf", "data/raw/msd", "--cores", "2", "--forcerun", "osf_source", "url_source",
              "--configfile", str(cfg), workdir=work, timeout=120)
    assert len(osf.downloads()) + len(msd.downloads()) == n_downloads


@pytest.mark.workflow  # runs Snakemake
def test_paper_config_dry_run(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    (tmp_path / "data" / "local" / "nih_pancreas_ct").mkdir(parents=True)
    proc = snakemake("-n", "--configfile", "config/paper.yaml", workdir=tmp_path, timeout=120)
    counts = job_counts(proc.stdout)
    assert counts["osf_source"] == 1 and counts["url_source"] == 1 and counts["local_source"] == 1
    assert counts["prepare_center"] == 2 + 5 + 5  # CT: MSD, NIH; T1 and T2: five centers each
    n_models = len(yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))["models"])
    assert n_models >= 6  # pansegnet, nnunet, transunet3d, lintransunet, unet2d, axunet
    assert counts["train"] == 3 * n_models * 5
    assert counts["predict_external"] == n_models  # NIH is CT's external center


def test_paper_config_without_nih_folder_names_it(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    proc = snakemake("-n", "--configfile", "config/paper.yaml", workdir=tmp_path, timeout=120, check=False)
    assert proc.returncode != 0 and "data/local/nih_pancreas_ct" in proc.stdout + proc.stderr


@pytest.mark.workflow  # runs Snakemake
def test_fixing_an_excluded_file_reruns_only_its_center(tmp_path):
    """Issue 16, item 8: excluded files are inputs too. A label fixed in the user's folder re-imports
    that source and re-prepares its center (only that one); a file edited under data/raw re-prepares
    its center too. Both local sources here: one linked (nnU-Net layout), one copied (PanSegData layout)."""
    from source_data import panseg_tree

    lab_src = tmp_path / "lab_folder"
    for k in (1, 2, 3):
        case_pair(lab_src / "imagesTr" / f"case_{k}_0000.nii.gz", lab_src / "labelsTr" / f"case_{k}.nii.gz", seed=k)
    bad = lab_src / "labelsTr" / "case_2.nii.gz"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:-10])  # truncated: excluded
    panseg_tree(tmp_path / "mri", "t1", centers=("AHN", "MCF"), n=2)
    cfg = {
        "study": "inventory-test",
        "sources": {"lab": {"type": "local", "path": str(lab_src), "center": "ABC"},
                    "mri": {"type": "local", "path": str(tmp_path / "mri"), "mode": "copy"}},
        "modalities": {
            "CT": {"source": "lab", "mapping": "name_mapping.json", "dataset_id": 109, "train_centers": ["ABC"]},
            "T1": {"source": "mri", "folder": "t1", "dataset_id": 110, "train_centers": ["AHN"],
                   "external_centers": ["MCF"]}},
        "prepare": {"on_bad_case": "exclude"},
        "models": ["nnunet"],
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ("data/manifest.tsv", "--configfile", "c.yaml")
    snakemake(*args, "--cores", "2", workdir=work, timeout=300)
    excluded = pd.read_csv(work / "data" / "excluded.tsv", sep="\t", keep_default_na=False)
    assert excluded.origin.tolist() == [str(bad)] and "truncated" in excluded.reason[0]
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(*args, "-n", workdir=work))

    bad.write_bytes(good_bytes)  # the lab fixes the label in its own folder
    counts = job_counts(snakemake(*args, "-n", workdir=work).stdout)
    assert counts == {"local_source": 1, "prepare_center": 1, "manifest": 1}, counts
    snakemake(*args, "--cores", "2", workdir=work, timeout=300)
    m = pd.read_csv(work / "data" / "manifest.tsv", sep="\t", keep_default_na=False)
    assert sorted(m[m.modality == "CT"].case_id) == ["ABC_0001", "ABC_0002", "ABC_0003"]
    assert len(pd.read_csv(work / "data" / "excluded.tsv", sep="\t")) == 0

    copied = work / "data" / "raw" / "mri" / "t1" / "labelsTr" / "MCF_0002.nii.gz"  # a copy under data/raw
    copied.write_bytes(copied.read_bytes()[:-10])
    counts = job_counts(snakemake(*args, "-n", workdir=work).stdout)
    assert counts == {"prepare_center": 1, "manifest": 1}, counts
    snakemake(*args, "--cores", "2", workdir=work, timeout=300)
    excluded = pd.read_csv(work / "data" / "excluded.tsv", sep="\t", keep_default_na=False)
    assert excluded.case_id.tolist() == ["MCF_0002"]
    assert excluded.origin.tolist() == [str(tmp_path / "mri" / "t1" / "labelsTr" / "MCF_0002.nii.gz")]

"""osf source against a local OSF-API-shaped server: listing, download faults, checksums, resume."""

import hashlib
import json
import logging
import shutil

import pytest

from source_data import osf_settings, osf_study, study_server  # noqa: F401 (fixture)
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.prepare import prepare_center
from workflow_scripts.data.sources import osf
from workflow_scripts.data.sources.download import DownloadError

T1 = "/Pancreas_MRI_Dataset/t1.zip"


def fetch(server, tmp_path, **kw):
    return osf.fetch(osf_settings(server, **kw), tmp_path / "raw" / "osf", tmp_path / "downloads" / "osf")


def test_clean_download_builds_the_raw_layout(osf_study, tmp_path):
    server, mappings = osf_study
    summary = fetch(server, tmp_path)
    out = tmp_path / "raw" / "osf"
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE.txt", "Meta informations", "download.json", "origins.tsv",
                                                    "t1", "t2"]
    assert (out / "t1" / "t1" / "imagesTr" / "AHN_0001_0000.nii.gz").exists()
    assert (out / "t2" / "t2" / "t2" / "train" / "labelsTr" / "NYU_0002.nii.gz").exists()
    assert json.loads((out / "Meta informations" / "T1-name_mapping.json").read_text(encoding="utf-8")) == mappings["T1"]
    assert not (out / "Meta informations" / "t2_info_osf.xlsx").exists()  # not selected
    assert {f["path"] for f in summary["files"]} == {
        T1, "/Pancreas_MRI_Dataset/t2.zip", "/Meta informations/T1-name_mapping.json",
        "/Meta informations/T2-name_mapping.json", "/LICENSE.txt"}
    # pagination followed (page size 2) and folders descended
    assert any("page=2" in r.path for r in server.requests if r.kind == "list")
    assert all(r.range_start is None for r in server.downloads())
    # what prepare reads: imagesTr/labelsTr at any depth, participant from the real-layout mapping
    df, _ = prepare_center(out / "t1", "T1", "AHN", "train-cv", tmp_path / "prep" / "AHN.tsv", tmp_path / "fixed",
                           mapping_file=out / "Meta informations" / "T1-name_mapping.json",
                           participant_regex=r"^(?P<participant>[A-Z]+-P\d+)-V\d+$", data_source="osf")
    assert df.participant_id.tolist() == ["AHN-P1", "AHN-P2"]


def test_second_run_downloads_nothing(osf_study, tmp_path):
    server, _ = osf_study
    fetch(server, tmp_path)
    n = len(server.downloads())
    shutil.rmtree(tmp_path / "raw" / "osf")  # as Snakemake does before it re-runs a job
    summary = fetch(server, tmp_path)
    assert len(server.downloads()) == n
    assert {f["status"] for f in summary["files"]} == {"present"}
    assert (tmp_path / "raw" / "osf" / "t1" / "t1" / "labelsTr" / "MCF_0002.nii.gz").exists()


def test_dropped_connection_resumes_with_range(osf_study, tmp_path):
    server, _ = osf_study
    size = len(server.files[T1])
    cut = size // 3
    server.faults[T1] = [("drop", cut)]
    fetch(server, tmp_path)
    first, second = server.downloads(T1)
    assert first.range_start is None and first.bytes_sent == cut
    assert second.status == 206 and second.range_start == cut  # resumed where it stopped
    assert second.bytes_sent == size - cut  # nothing sent twice
    data = (tmp_path / "downloads" / "osf" / "Pancreas_MRI_Dataset" / "t1.zip").read_bytes()
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(server.files[T1]).hexdigest()


def test_503_and_429_then_success(osf_study, tmp_path):
    server, _ = osf_study
    server.listing_faults = [503, 429]
    server.faults[T1] = [("status", 503), ("status", 502)]
    fetch(server, tmp_path)
    assert [r.status for r in server.downloads(T1)] == [503, 502, 200]
    assert [r.status for r in server.requests if r.kind == "list"][:3] == [503, 429, 200]


def test_truncated_body_is_an_error_and_leaves_nothing(osf_study, tmp_path):
    server, _ = osf_study
    server.truncate[T1] = len(server.files[T1]) // 2  # the server always ends the body early
    with pytest.raises(DownloadError, match="gave up after 3 retries"):
        fetch(server, tmp_path)
    assert not (tmp_path / "downloads" / "osf" / "Pancreas_MRI_Dataset" / "t1.zip").exists()
    assert not (tmp_path / "raw" / "osf").exists()


def test_wrong_checksum_is_refused_and_removed(osf_study, tmp_path):
    server, _ = osf_study
    server.meta[T1] = {"sha256": "0" * 64}
    with pytest.raises(DownloadError, match="sha256 .* expected 0000") as err:
        fetch(server, tmp_path)
    assert str(err.value).startswith("Pancreas_MRI_Dataset/t1.zip: downloaded from http")  # the file as the user knows it
    folder = tmp_path / "downloads" / "osf" / "Pancreas_MRI_Dataset"
    assert not (folder / "t1.zip").exists() and not (folder / "t1.zip.part").exists()
    assert not (tmp_path / "raw" / "osf").exists()


def test_a_present_file_that_no_longer_matches_is_downloaded_again(osf_study, tmp_path):
    server, _ = osf_study
    stale = tmp_path / "downloads" / "osf" / "Pancreas_MRI_Dataset" / "t1.zip"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"corrupt")
    fetch(server, tmp_path)
    assert stale.read_bytes() == server.files[T1] and len(server.downloads(T1)) == 1


def test_pinned_checksum_that_differs_upstream_stops_before_downloading(osf_study, tmp_path):
    server, _ = osf_study
    with pytest.raises(InputError, match="changed upstream"):
        fetch(server, tmp_path, pins={T1: {"sha256": "a" * 64}})
    assert server.downloads() == []


def test_token_is_sent_but_never_logged(osf_study, tmp_path, monkeypatch, caplog):
    server, _ = osf_study
    secret = "s3cr3t-token-value"
    monkeypatch.setenv("TEST_OSF_TOKEN", secret)
    with caplog.at_level(logging.DEBUG):
        fetch(server, tmp_path, token_env="TEST_OSF_TOKEN")
    assert all(r.auth == f"Bearer {secret}" for r in server.requests)
    assert secret not in caplog.text
    assert all(secret not in p.read_text(errors="ignore") for p in (tmp_path / "raw").rglob("*.json"))


def test_missing_file_names_the_pattern(osf_study, tmp_path):
    server, _ = osf_study
    with pytest.raises(InputError, match="no file matches '/Pancreas_MRI_Dataset/ct.zip'"):
        fetch(server, tmp_path, files=["/Pancreas_MRI_Dataset/ct.zip"])


def test_wrong_node_names_the_status(osf_study, tmp_path):
    server, _ = osf_study
    with pytest.raises(DownloadError, match="HTTP 404.*check the node id"):
        osf.fetch(osf_settings(server, node="nosuch"), tmp_path / "raw" / "osf", tmp_path / "dl")


def test_zip_with_parent_entry_is_refused(tmp_path):
    server, _ = study_server(tmp_path)
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("t1/imagesTr/AHN_0001_0000.nii.gz", b"x")
        zf.writestr("../../escaped.txt", b"owned")
    server.add(T1, buf.getvalue())
    server.start()
    try:
        with pytest.raises(InputError, match="climbs out"):
            fetch(server, tmp_path)
    finally:
        server.stop()
    assert not (tmp_path / "raw" / "osf").exists()
    assert not list(tmp_path.rglob("escaped.txt"))


def test_token_is_not_sent_over_plain_http_to_another_host(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_OSF_TOKEN", "s3cr3t")
    with pytest.raises(DownloadError, match="plain http"):
        osf.fetch({"api_url": "http://osf.example.org/v2", "token_env": "TEST_OSF_TOKEN"}, tmp_path / "o", tmp_path / "d")


def test_partial_file_of_an_earlier_run_is_resumed(osf_study, tmp_path):
    server, _ = osf_study
    part = tmp_path / "downloads" / "osf" / "Pancreas_MRI_Dataset" / "t1.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files[T1][:1000])  # what an interrupted run left behind
    fetch(server, tmp_path)
    (only,) = server.downloads(T1)
    assert only.range_start == 1000 and only.bytes_sent == len(server.files[T1]) - 1000
    assert not part.exists()

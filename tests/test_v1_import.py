"""import-v1: v1 networks (the real Generic_UNet of PyPI nnunet 1.7.1, and a naive PanSegNet v1 written in
tests/v1_models.py) give the same logits as the imported v2 networks; released-folder quirks; every way a
tampered or incomplete v1 folder is refused, naming the file, with nothing written."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunet", reason="nnU-Net v1 (PyPI nnunet 1.7.1, installed by `make install`)")

import v1_models as V  # noqa: E402
from workflow_scripts.deployment import bundle as B  # noqa: E402
from workflow_scripts.deployment import v1_import  # noqa: E402
from workflow_scripts.models.efficient_attention import BottleneckTransformer, legacy_1d_position_code  # noqa: E402
from workflow_scripts.nnunet.predict import load_checkpoint  # noqa: E402

torch.set_num_threads(1)
PLANS = {"isotropic": V.ISOTROPIC, "anisotropic": V.ANISOTROPIC}
TRAINERS = {"unet": "nnUNetTrainerV2", "pansegnet": "nnTransUNetTrainerV2"}


def v1_network(kind, plans, seed=0):
    net = V.generic_unet(plans) if kind == "unet" else V.naive_pansegnet(plans)
    net.do_ds = False
    return V.randomize(net, seed).eval()


def imported_network(bundle_path, dest):
    b = B.extract(bundle_path, dest)
    plans = json.loads((b.root / "plans.json").read_text())
    dataset = json.loads((b.root / "dataset.json").read_text())
    nets = []
    for ck in b.checkpoints:
        net = v1_import.build_network(plans, dataset, b.info["trainer"])
        net.load_state_dict(load_checkpoint(ck)["network_weights"])
        nets.append(net.eval())
    return b, plans, nets


@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_imported_network_gives_v1_logits(tmp_path, plan, kind):
    cfg = PLANS[plan]
    plans = V.v1_plans(cfg["patch"], cfg["spacing"], cfg["pool"], cfg["conv"])
    net = v1_network(kind, plans)
    folder = V.save_v1_folder(tmp_path, TRAINERS[kind], net, plans)
    out = v1_import.import_v1(folder, tmp_path / "b.tar", "T1", kind)
    b, v2_plans, (v2,) = imported_network(out, tmp_path / "x")
    x = torch.randn(2, 1, *cfg["patch"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (net(x) - v2(x)).abs().max().item()
    assert diff <= 1e-4
    conf = v2_plans["configurations"]["3d_fullres"]
    # v1's decoder kernels differ from v2's only when the first stage is anisotropic
    assert ("panseg_decoder_kernel_sizes" in conf) == (plan == "anisotropic")
    if kind == "pansegnet":
        assert b.info["network"] == {"d_model": 16, "heads": 8, "layers": 2, "ff_dim": 16, "dropout": 0.3,
                                     "positional_encoding": "legacy_1d",
                                     "positional_length": {"isotropic": 8, "anisotropic": 32}[plan],
                                     "layer_norm_eps": 1e-6}
        assert b.info["trainer"] == "workflow_scripts.trainers.pansegnet:PanSegNetTrainer"
        with pytest.raises(ValueError, match=f"fixed to {b.info['network']['positional_length']} bottleneck tokens"):
            v2(torch.randn(1, 1, *[2 * p for p in cfg["patch"]]))
    assert (b.info["format_version"], b.info["inference_semantics"], b.info["inference"]["mirroring"]) == (2, "v1", True)


def test_legacy_positional_code_is_the_released_sinusoid():
    naive = V.NaivePositionalEncoding(300, 64).pe
    assert torch.allclose(legacy_1d_position_code(300, 64), naive, atol=2e-5)
    block = BottleneckTransformer(8, d_model=16, heads=8, layers=1, ff_dim=16, dropout=0.0,
                                  positional_encoding="legacy_1d", positional_length=12).eval()
    assert block(torch.randn(1, 8, 2, 2, 3)).shape == (1, 8, 2, 2, 3)
    with pytest.raises(ValueError, match="fixed to 12 bottleneck tokens.*this input gives 24"):
        block(torch.randn(1, 8, 2, 4, 3))
    assert "legacy_pe" not in BottleneckTransformer(8, d_model=16, heads=8, layers=1).state_dict()  # default unchanged


def released_layout(tmp_path, kind="pansegnet", **kw):
    """As published: no plans.pkl, postprocessing.json in fold_0/, validation summary in fold_0/."""
    cfg = V.ANISOTROPIC
    plans = V.v1_plans(cfg["patch"], cfg["spacing"], cfg["pool"], cfg["conv"])
    net = v1_network(kind, plans)
    args = dict(plans_pkl=False, postprocessing={"for_which_classes": [1], "min_valid_object_sizes": "{1: 250.0}"},
                pp_level="fold", validation=["AHN_0003", "NYU_0001"])
    args.update(kw)
    return V.save_v1_folder(tmp_path / "v1", TRAINERS[kind], net, plans, **args), plans, net


def test_released_folder_layout(tmp_path):
    folder, plans, net = released_layout(tmp_path)
    out = v1_import.import_v1(folder, tmp_path / "panseg_T1_released.tar", "T1", "pansegnet_released")
    info = B.extract(out, tmp_path / "x").info
    assert info["source"]["plans_from"].endswith("fold_0/model_final_checkpoint.model.pkl")
    assert info["postprocessing"] == {"for_which_classes": [1], "min_valid_object_sizes": [[1, 250.0]],
                                      "source": "fold_0/postprocessing.json"}
    assert info["v1_validation_cases"]["0"]["cases"] == ["AHN_0003", "NYU_0001"]
    assert (info["model"], info["modality"]) == ("pansegnet_released", "T1")


def test_plans_from_option_and_missing_plans(tmp_path):
    folder, plans, _ = released_layout(tmp_path, model_pkl=False)
    out = tmp_path / "b.tar"
    with pytest.raises(v1_import.V1ImportError, match=r"plans.pkl: no plans.*--plans.*nnUNetPlansv2.1_plans_3D.pkl"):
        v1_import.import_v1(folder, out, "T1", "m")
    assert not out.exists()
    plans_file = tmp_path / "nnUNetPlansv2.1_plans_3D.pkl"
    plans_file.write_bytes(pickle.dumps(plans))
    assert B.main(["import-v1", "--model-dir", str(folder), "--plans", str(plans_file), "--modality", "T1",
                   "--model", "m", "--no-mirroring", "--out", str(out)]) == 0
    info = B.extract(out, tmp_path / "x").info
    assert info["source"]["plans_from"] == str(plans_file) and info["inference"]["mirroring"] is False
    assert B.main(["verify", str(out)]) == 0


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _edit_state(folder, change):
    ck = folder / "fold_0" / V.CHECKPOINT
    with torch.serialization.safe_globals(V.V1_SAFE):
        data = torch.load(ck, weights_only=True)
    change(data["state_dict"])
    torch.save(data, ck)


def _missing_fold(folder, marker):
    (folder / "fold_1").mkdir()
    (folder / "fold_1" / "debug.json").write_text("{}")


def _wrong_shape(folder, marker):
    _edit_state(folder, lambda s: s.__setitem__("conv_blocks_context.1.blocks.0.conv.weight", torch.zeros(8, 4, 3, 3, 1)))


def _unknown_trainer(folder, marker):
    pkl = folder / "fold_0" / f"{V.CHECKPOINT}.pkl"
    info = pickle.loads(pkl.read_bytes())
    pkl.write_bytes(pickle.dumps({**info, "name": "nnUNetTrainerV2_LinTransUNet"}))


def _extra_tensor(folder, marker):
    _edit_state(folder, lambda s: s.__setitem__("self_atten.extra.weight", torch.zeros(3)))


def _missing_tensor(folder, marker):
    _edit_state(folder, lambda s: s.pop("self_atten.transformer.layers.1.linear2.weight"))


def _code_in_model_pkl(folder, marker):
    pkl = folder / "fold_0" / f"{V.CHECKPOINT}.pkl"
    pkl.write_bytes(pickle.dumps({**pickle.loads(pkl.read_bytes()), "payload": Evil(marker)}))


def _code_in_checkpoint(folder, marker):
    ck = folder / "fold_0" / V.CHECKPOINT
    with torch.serialization.safe_globals(V.V1_SAFE):
        data = torch.load(ck, weights_only=True)
    torch.save({**data, "payload": Evil(marker)}, ck)


def _truncated_checkpoint(folder, marker):
    ck = folder / "fold_0" / V.CHECKPOINT
    ck.write_bytes(ck.read_bytes()[:5000])


def _bad_postprocessing(folder, marker):
    (folder / "fold_0" / "postprocessing.json").write_text('{"min_valid_object_sizes": "{1: 2}"}')


@pytest.mark.parametrize("tamper, file, message", [
    (_missing_fold, "fold_1/model_final_checkpoint.model", "file does not exist: fold 1 has no final checkpoint"),
    (_wrong_shape, "fold_0/model_final_checkpoint.model",
     r"tensor 'conv_blocks_context.1.blocks.0.conv.weight' has shape \(8, 4, 3, 3, 1\); the network its plans "
     r"describe expects \(8, 4, 3, 3, 3\)"),
    (_unknown_trainer, "fold_0/model_final_checkpoint.model.pkl", "trainer 'nnUNetTrainerV2_LinTransUNet' is not one"),
    (_extra_tensor, "fold_0/model_final_checkpoint.model", "tensor 'self_atten.extra.weight' has no place"),
    (_missing_tensor, "fold_0/model_final_checkpoint.model",
     "tensor 'self_atten.transformer.layers.1.linear2.weight' is missing"),
    (_code_in_model_pkl, "fold_0/model_final_checkpoint.model.pkl", "refusing to load .*Path"),
    (_code_in_checkpoint, "fold_0/model_final_checkpoint.model", "cannot be loaded as a weights-only torch checkpoint"),
    (_truncated_checkpoint, "fold_0/model_final_checkpoint.model", "cannot be loaded as a weights-only"),
    (_bad_postprocessing, "fold_0/postprocessing.json", "is not a v1 postprocessing file"),
])
def test_tampered_or_incomplete_folder_is_refused(tmp_path, tamper, file, message):
    folder, _, _ = released_layout(tmp_path)
    marker = tmp_path / "pwned"
    tamper(folder, marker)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(v1_import.V1ImportError, match=message) as e:
        v1_import.import_v1(folder, out_dir / "b.tar", "T1", "m")
    assert str(e.value).startswith(str(folder / file))
    assert not marker.exists()  # no pickled code ran
    assert list(out_dir.iterdir()) == []  # nothing half-written, no temporary files left


def test_command_reports_errors_with_exit_status_2(tmp_path, caplog):
    assert B.main(["import-v1", "--model-dir", str(tmp_path / "nowhere"), "--modality", "T1", "--model", "m",
                   "--out", str(tmp_path / "b.tar")]) == 2
    assert "nowhere: model folder does not exist" in caplog.text


def test_old_and_future_bundles():
    assert B.inference_semantics({"format": "panseg-bundle"}) == "v2"  # bundles made before the field existed
    assert B.READ_FORMAT_VERSION == 2 and B.FORMAT_VERSION == 1


def test_plain_data_unpickler_reads_numpy_1_names():
    """Plans pickled by numpy 1 name numpy.core.multiarray; they load under numpy 2, nothing else does."""
    data = pickle.dumps({"a": np.arange(3), "s": np.float64(2.5)}, protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    loaded = v1_import.PlainDataUnpickler(__import__("io").BytesIO(old)).load()
    assert loaded["s"] == 2.5 and loaded["a"].tolist() == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError, match="refusing to load os.system"):
        v1_import.PlainDataUnpickler(__import__("io").BytesIO(b"cos\nsystem\n(S'true'\ntR.")).load()


def test_checkpoint_with_numpy_1_scalars_loads(tmp_path):
    """The released .model files were written with numpy 1 (numpy.core.multiarray.scalar)."""
    path = tmp_path / "old.model"
    torch.save({"state_dict": {"w": torch.ones(2)}, "plot_stuff": ([np.float64(0.5)],)}, path)
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    assert b"numpy._core.multiarray" in members[pkl]
    # same length either way round would shift pickle offsets: rewrite the GLOBAL opcode's module name
    members[pkl] = members[pkl].replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    assert v1_import.load_v1_checkpoint(path)["w"].tolist() == [1.0, 1.0]


@pytest.mark.workflow  # runs Snakemake
def test_snakemake_imports_config_listed_models(tmp_path):
    """`v1_imports` in config: rule import_v1 writes <results>/imported/<name>.tar; a second run does nothing."""
    import yaml

    from helpers import REPO, job_counts, snakemake

    folder, _, _ = released_layout(tmp_path)
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"v1_imports": {"released_T1": {
        "model_dir": str(folder), "modality": "T1", "model": "pansegnet_released", "mirroring": False}}}))
    work = tmp_path / "work"
    work.mkdir()
    configs = ["--configfile", str(REPO / "tests" / "data" / "tiny.yaml"), str(extra)]
    snakemake("--cores", "1", "import_v1_all", *configs, workdir=work, timeout=600)
    results = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text()).get("results_dir", "results")
    info = B.extract(work / results / "imported" / "released_T1.tar", tmp_path / "x").info
    assert (info["model"], info["inference_semantics"], info["inference"]["mirroring"]) == (
        "pansegnet_released", "v1", False)
    dry = snakemake("-n", "import_v1_all", *configs, workdir=work, timeout=300)
    assert job_counts(dry.stdout) == {}  # up to date

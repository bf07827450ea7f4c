"""SAM / MedSAM with the reference box: the real segment-anything code with tiny random models.

segment_anything imports torchvision, which does not import beside the project's CPU torch, so
these tests run in .venv-sam (`make test` runs them there after the main suite:
`.venv-sam/bin/pytest tests/test_prompted.py`); in the main venv they are skipped.
No weights can be downloaded here: the models are built from segment_anything.modeling with a few
small layers and random weights. What is checked is the authors' protocol, not the masks' quality.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

pytest.importorskip("segment_anything", reason="runs in .venv-sam (make test; see requirements-sam.lock)")

import torch  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from skimage import transform  # noqa: E402

from conftest import write_nifti  # noqa: E402
from workflow_scripts.nnunet import prompted as P  # noqa: E402

torch.set_num_threads(1)
SHAPE = (7, 20, 24)  # z, y, x
LABEL_BOX = dict(z_min=2, z_max=4, y_min=5, y_max=12, x_min=6, x_max=15)


def tiny_sam(seed=0) -> Sam:
    """SAM's architecture (1024² input, 16² patches) with one small block everywhere, random weights."""
    torch.manual_seed(seed)
    dim, grid = 32, 1024 // 16
    encoder = ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
                              out_chans=dim, qkv_bias=True, window_size=8, global_attn_indexes=())
    prompt = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(1024, 1024),
                           mask_in_chans=4)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=1, iou_head_hidden_dim=16,
                          transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2))
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def scan_and_label(rng=None):
    rng = rng or np.random.default_rng(0)
    image = rng.normal(300, 40, SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    b = LABEL_BOX
    zz, yy, xx = np.indices(SHAPE)
    inside = ((zz >= b["z_min"]) & (zz <= b["z_max"]) & (yy >= b["y_min"]) & (yy <= b["y_max"])
              & (xx >= b["x_min"]) & (xx <= b["x_max"]))
    # an irregular object whose extremes reach every side of the box
    label[inside & ((yy + xx + zz) % 3 != 0)] = 1
    label[b["z_min"], b["y_min"], b["x_min"]] = label[b["z_max"], b["y_max"], b["x_max"]] = 1
    image[label > 0] += 200
    return image, label


def test_reference_box_is_the_labels_bounding_box():
    _, label = scan_and_label()
    assert P.reference_box(label) == P.Box(**LABEL_BOX)
    assert P.reference_box(np.zeros(SHAPE)) is None
    # the 2-D prompt in the transposed slice (rows = x, columns = y): [y_min, x_min, y_max, x_max]
    assert P.Box(**LABEL_BOX).slice_box().tolist() == [5, 6, 12, 15]


def test_slice_is_min_max_scaled_to_uint8_with_three_channels():
    s = np.array([[0.0, 10.0], [20.0, 30.0]]) - 7
    rgb = P.slice_rgb(s)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    # (v - min) / (max - min + 1) * 255, truncated: 0, 82.26, 164.5, 246.8
    assert rgb[..., 0].tolist() == [[0, 82], [164, 246]]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_only_slices_in_the_boxs_z_range_are_segmented():
    image, label = scan_and_label()
    calls = []

    def everything(rgb, box):
        calls.append((rgb, box))
        return np.ones(rgb.shape[:2], np.uint8)

    mask, box = P.segment_volume(everything, image, label)
    b = LABEL_BOX
    assert len(calls) == b["z_max"] - b["z_min"] + 1
    assert mask[b["z_min"]:b["z_max"] + 1].all() and not mask[:b["z_min"]].any() and not mask[b["z_max"] + 1:].any()
    for k, (rgb, prompt) in enumerate(calls):
        z = b["z_min"] + k
        assert prompt.tolist() == [b["y_min"], b["x_min"], b["y_max"], b["x_max"]]
        assert np.array_equal(rgb, P.slice_rgb(image[z].T))  # transposed as in the authors' code
    empty, none = P.segment_volume(everything, image, np.zeros(SHAPE, np.uint8))
    assert none is None and not empty.any() and len(calls) == 3


def test_sam_gets_each_slice_and_the_box_through_its_own_predictor():
    """SamPredictor: the uint8 slice as RGB, the box, one mask; the mask is the predictor's logits > 0."""
    image, label = scan_and_label()
    slices = P.SamSlices(tiny_sam())
    seen = []
    set_image, predict = slices.predictor.set_image, slices.predictor.predict

    def spy_set_image(img, image_format="RGB"):
        seen.append(("image", img.copy()))
        return set_image(img, image_format)

    def spy_predict(**kw):
        seen.append(("box", kw["box"].copy(), kw["multimask_output"]))
        masks, scores, logits = predict(**kw, return_logits=True)
        seen.append(("logits", masks[0].copy()))
        return masks > slices.predictor.model.mask_threshold, scores, logits

    slices.predictor.set_image, slices.predictor.predict = spy_set_image, spy_predict
    mask, _ = P.segment_volume(slices, image, label)
    b = LABEL_BOX
    images = [s[1] for s in seen if s[0] == "image"]
    boxes = [s for s in seen if s[0] == "box"]
    logits = [s[1] for s in seen if s[0] == "logits"]
    assert len(images) == len(boxes) == b["z_max"] - b["z_min"] + 1
    for k, img in enumerate(images):
        assert img.dtype == np.uint8 and img.shape == (SHAPE[2], SHAPE[1], 3)
        assert np.array_equal(img, P.slice_rgb(image[b["z_min"] + k].T))
        assert boxes[k][1].tolist() == [[b["y_min"], b["x_min"], b["y_max"], b["x_max"]]] and boxes[k][2] is False
        assert np.array_equal(mask[b["z_min"] + k], (logits[k] > 0).T.astype(np.uint8))
    assert not mask[:b["z_min"]].any() and not mask[b["z_max"] + 1:].any()


def test_medsam_resizes_to_1024_scales_the_box_and_thresholds_at_half():
    image, label = scan_and_label()
    sam = tiny_sam()
    seen = {}
    encoder, prompt_encoder, decoder = sam.image_encoder, sam.prompt_encoder, sam.mask_decoder

    class Spy(torch.nn.Module):
        def __init__(self, name, module, result=None):
            super().__init__()
            self.name, self.module, self.result = name, module, result

        def forward(self, *args, **kwargs):
            seen.setdefault(self.name, []).append((args, kwargs))
            out = self.module(*args, **kwargs)
            return self.result(out) if self.result else out

    # logits: +0.1 in the top half, exactly 0 (sigmoid 0.5) in the bottom half of the 256² map
    def fixed_logits(out):
        logits = torch.zeros_like(out[0])
        logits[..., : logits.shape[-2] // 2, :] = 0.1
        return logits, out[1]

    def spy_prompt(**kwargs):
        seen.setdefault("prompt", []).append(kwargs)
        return prompt_forward(**kwargs)

    sam.image_encoder = Spy("encoder", encoder)
    sam.mask_decoder = Spy("decoder", decoder, fixed_logits)
    prompt_forward, prompt_encoder.forward = prompt_encoder.forward, spy_prompt
    slices = P.MedSamSlices(sam)
    z = LABEL_BOX["z_min"]
    rgb = P.slice_rgb(image[z].T)
    box = P.Box(**LABEL_BOX).slice_box()
    out = slices(rgb, box)
    (x,), _ = seen["encoder"][0]
    assert tuple(x.shape) == (1, 3, 1024, 1024)
    expected = transform.resize(rgb, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    expected = (expected - expected.min()) / max(expected.max() - expected.min(), 1e-8)
    assert np.allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    h, w = rgb.shape[:2]
    boxes = seen["prompt"][0]["boxes"]
    assert np.allclose(boxes.numpy().reshape(4), box / np.array([w, h, w, h]) * 1024)
    # sigmoid(0.1) > 0.5 is foreground, sigmoid(0) = 0.5 is not: the top half, upsampled to the slice size
    assert out.shape == (h, w) and out.dtype == np.uint8
    assert out[: h // 2 - 1].all() and not out[h // 2 + 1:].any()


@pytest.fixture
def cases(tmp_path):
    """Two scans in odd geometry (one with an empty reference) and their TSV."""
    rows = []
    direction = (0, 1, 0, 1, 0, 0, 0, 0, -1)
    for k, empty in ((1, False), (2, True)):
        image, label = scan_and_label(np.random.default_rng(k))
        if empty:
            label[:] = 0
        img = write_nifti(tmp_path / "in" / f"C_{k}_0000.nii.gz", image, spacing=(0.8, 0.9, 3.0),
                          origin=(10, -20, 5), direction=direction)
        lab = write_nifti(tmp_path / "in" / f"C_{k}.nii.gz", label, spacing=(0.8, 0.9, 3.0), origin=(10, -20, 5),
                          direction=direction)
        rows.append({"case_id": f"C_{k}", "image": str(img), "label": str(lab)})
    path = tmp_path / "cases.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A tiny model's state dict saved as a checkpoint, and the registry's vit_b builder swapped for one
    that builds the tiny architecture and loads it the way segment_anything's builders do."""
    import segment_anything

    path = tmp_path / "tiny_vit_b.pth"
    torch.save(tiny_sam(seed=3).state_dict(), path)

    def build(checkpoint=None):
        sam = tiny_sam(seed=99)
        with open(checkpoint, "rb") as f:
            sam.load_state_dict(torch.load(f))
        return sam

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", build)
    return path


@pytest.mark.parametrize("method", ["sam", "medsam"])
def test_command_writes_masks_in_the_scans_geometry(cases, checkpoint, tmp_path, method):
    out = tmp_path / "out"
    assert P.main(["--cases", str(cases), "--method", method, "--model-type", "vit_b", "--checkpoint",
                   str(checkpoint), "--out", str(out), "--device", "cpu"]) == 0
    prompts = pd.read_csv(out / "prompts.tsv", sep="\t")
    assert prompts.case_id.tolist() == ["C_1", "C_2"] and prompts.prompted.tolist() == ["yes", "no"]
    assert prompts.iloc[0][list(LABEL_BOX)].astype(int).to_dict() == LABEL_BOX and prompts.slices.tolist() == [3, 0]
    for case in ("C_1", "C_2"):
        mask = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(tmp_path / "in" / f"{case}_0000.nii.gz"))
        assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetSpacing(), image.GetSpacing())
        assert np.allclose(mask.GetOrigin(), image.GetOrigin()) and np.allclose(mask.GetDirection(), image.GetDirection())
        arr = sitk.GetArrayFromImage(mask)
        assert set(np.unique(arr)) <= {0, 1}
        outside = np.ones(SHAPE, bool)
        if case == "C_1":
            outside[LABEL_BOX["z_min"]:LABEL_BOX["z_max"] + 1] = False
        assert not arr[outside].any()


def test_the_loaded_checkpoint_is_the_one_given(checkpoint):
    sam = P.load_model("sam", "vit_b", checkpoint, torch.device("cpu"))
    saved = torch.load(checkpoint)
    assert all(torch.equal(sam.state_dict()[k], v) for k, v in saved.items())


def test_bad_inputs_are_named_and_leave_no_output(cases, checkpoint, tmp_path, caplog):
    out = tmp_path / "out"
    missing = tmp_path / "nope.pth"
    assert P.main(["--cases", str(cases), "--method", "sam", "--model-type", "vit_b", "--checkpoint", str(missing),
                   "--out", str(out), "--device", "cpu"]) == 2
    assert str(missing) in caplog.text and not out.exists()
    table = pd.read_csv(cases, sep="\t")
    small = write_nifti(tmp_path / "small.nii.gz", np.zeros((3, 4, 5), np.uint8))
    table.loc[1, "label"] = str(small)
    bad = tmp_path / "bad.tsv"
    table.to_csv(bad, sep="\t", index=False)
    assert P.main(["--cases", str(bad), "--method", "medsam", "--model-type", "vit_b", "--checkpoint", str(checkpoint),
                   "--out", str(out), "--device", "cpu"]) == 2
    assert str(small) in caplog.text and "differs from the image" in caplog.text
    assert not out.exists() and not list(tmp_path.glob(".part-*"))

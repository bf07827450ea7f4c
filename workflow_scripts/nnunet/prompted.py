"""SAM and MedSAM given a box prompt from the reference label: the authors' protocol (NUBagciLab/Pancreas_SAM).

    python -m workflow_scripts.prompted --cases TSV --method sam|medsam --model-type vit_h \
        --checkpoint CK --out DIR [--device auto|cpu|cuda] [--threads N]

Reads the columns case_id, image, label of TSV; writes DIR/<case_id>.nii.gz (0/1, in the scan's
geometry) and DIR/prompts.tsv (the box given for each case). The folder appears only when every
case is done. Runs Meta's ``segment-anything`` package with the user's checkpoint (vit_h for SAM,
vit_b for MedSAM; nothing is downloaded) in its own environment (``.venv-sam``, envs/sam.yaml):
segment_anything imports torchvision, which does not import beside the project's CPU torch.

The protocol, as in the authors' SAM/infer.py and MedSAM/infer.py:
- the prompt is the reference label's 3-D bounding box: the same 2-D box on every axial slice from
  its z_min to its z_max; slices outside that range are 0 (and never shown to the model);
- each slice is scaled by its own min and max to 8 bit, (v - min) / (max - min + 1) * 255,
  truncated to uint8, and repeated to 3 channels;
- the slice is given to the model transposed, rows = the image's x index (the authors transpose
  the SimpleITK array to x, y, z), with the box [y_min, x_min, y_max, x_max] in that image's
  (column, row) pixel coordinates; the mask is transposed back;
- SAM: ``SamPredictor`` (its own resize of the longest side to 1024, normalisation and padding),
  one mask (multimask_output=False), logits > 0;
- MedSAM: the slice resized to 1024×1024 (scikit-image, cubic, anti-aliased), back to uint8, then
  min-max scaled to [0, 1]; the box scaled to 1024; image encoder, prompt encoder, mask decoder;
  sigmoid of the 256×256 logits upsampled (bilinear) to the slice size, thresholded at 0.5.
A reference label without foreground gives no prompt: the case's mask is empty (logged, and
``prompted: no`` in prompts.tsv).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from workflow_scripts.common.atomic import atomic_dir
from workflow_scripts.common.errors import InputError
from workflow_scripts.nnunet.devices import pick_device

log = logging.getLogger(__name__)

METHODS = ("sam", "medsam")
MODEL_TYPES = ("vit_h", "vit_l", "vit_b")
MEDSAM_SIZE = 1024


@dataclass(frozen=True)
class Box:
    """The reference's 3-D bounding box in array indices (inclusive)."""

    z_min: int
    z_max: int
    y_min: int
    y_max: int
    x_min: int
    x_max: int

    def slice_box(self) -> np.ndarray:
        """The 2-D prompt [x0, y0, x1, y1] in the transposed slice's pixels (column = y, row = x)."""
        return np.array([self.y_min, self.x_min, self.y_max, self.x_max])


def reference_box(label: np.ndarray) -> Box | None:
    """Bounding box of the label's foreground (array order z, y, x); None when it has none."""
    coords = np.argwhere(label > 0)
    if coords.size == 0:
        return None
    (z0, y0, x0), (z1, y1, x1) = coords.min(0), coords.max(0)
    return Box(int(z0), int(z1), int(y0), int(y1), int(x0), int(x1))


def slice_rgb(image_slice: np.ndarray) -> np.ndarray:
    """One slice as the authors give it to SAM: per-slice min-max to 8 bit, 3 channels, [H, W, 3]."""
    s = image_slice.astype(np.float64)
    scaled = (s - s.min()) / (s.max() - s.min() + 1) * 255
    return np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=-1)


class SamSlices:
    """SAM's own predictor (resize, normalisation, padding, logits > 0)."""

    def __init__(self, sam):
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)

    def __call__(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        self.predictor.set_image(rgb)
        masks, _, _ = self.predictor.predict(point_coords=None, point_labels=None, box=box[None, :],
                                             multimask_output=False)
        return masks[0].astype(np.uint8)


class MedSamSlices:
    """MedSAM's inference (MedSAM_Inference.py): 1024² resize, [0, 1] scaling, sigmoid > 0.5."""

    def __init__(self, sam):
        self.sam = sam

    def __call__(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        import torch
        from skimage import transform
        from torch.nn import functional as F

        h, w, _ = rgb.shape
        img = transform.resize(rgb, (MEDSAM_SIZE, MEDSAM_SIZE), order=3, preserve_range=True,
                               anti_aliasing=True).astype(np.uint8)
        img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
        device = next(self.sam.parameters()).device
        tensor = torch.tensor(img).float().permute(2, 0, 1).unsqueeze(0).to(device)
        box_1024 = box[None, :] / np.array([w, h, w, h]) * MEDSAM_SIZE
        with torch.no_grad():
            embedding = self.sam.image_encoder(tensor)
            boxes = torch.as_tensor(box_1024, dtype=torch.float, device=device)[:, None, :]
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
            logits, _ = self.sam.mask_decoder(image_embeddings=embedding, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                              multimask_output=False)
            prob = F.interpolate(torch.sigmoid(logits), size=(h, w), mode="bilinear", align_corners=False)
        return (prob.squeeze().cpu().numpy() > 0.5).astype(np.uint8)


def slice_predictor(sam, method: str):
    if method == "sam":
        return SamSlices(sam)
    if method == "medsam":
        return MedSamSlices(sam)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def segment_volume(predict_slice, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, Box | None]:
    """Mask (z, y, x) of one scan from its reference label's box; slices outside the box's z-range stay 0."""
    mask = np.zeros(image.shape, dtype=np.uint8)
    box = reference_box(label)
    if box is None:
        return mask, None
    prompt = box.slice_box()
    for z in range(box.z_min, box.z_max + 1):
        # transposed as in the authors' code: rows = x, columns = y
        mask[z] = predict_slice(slice_rgb(image[z].T), prompt).T
    return mask, box


def load_model(method: str, model_type: str, checkpoint, device):
    """A segment_anything model from the user's checkpoint (no download)."""
    try:
        from segment_anything import sam_model_registry
    except ImportError as exc:  # e.g. torchvision beside the CPU torch of .venv
        raise RuntimeError(f"segment_anything does not import in {sys.executable} ({exc}): run SAM/MedSAM with "
                           ".venv-sam/bin/python (`make sam-env`) or in the conda env envs/sam.yaml") from None

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type must be one of {MODEL_TYPES}, got {model_type!r}")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(checkpoint, f"{method} checkpoint does not exist")
    try:
        sam = sam_model_registry[model_type](checkpoint=str(checkpoint))
    except (RuntimeError, KeyError, OSError, EOFError) as exc:  # wrong architecture or not a checkpoint
        raise InputError(checkpoint, f"cannot be loaded as a {model_type} {method} checkpoint ({exc})"[:2000]) from None
    return sam.to(device).eval()


def _read(path, what: str) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"{what} cannot be read ({str(exc).strip().splitlines()[-1]})") from None


def read_case(image_path, label_path) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    image = _read(image_path, "image")
    label = _read(label_path, "label")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(image_path, "expected a 3-D single-channel image")
    if label.GetSize() != image.GetSize():
        raise InputError(label_path, f"label size {label.GetSize()} differs from the image's {image.GetSize()}")
    return image, sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)


def predict_cases(sam, method: str, cases: pd.DataFrame, out_dir) -> pd.DataFrame:
    """Segment every case into out_dir (written whole or not at all); returns the prompts table."""
    missing = {"case_id", "image", "label"} - set(cases.columns)
    if missing:
        raise ValueError(f"cases table lacks columns {sorted(missing)}")
    predict_slice = slice_predictor(sam, method)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for i, row in enumerate(cases.sort_values("case_id").itertuples(), 1):
            t0 = time.time()
            image, arr, label = read_case(row.image, row.label)
            mask, box = segment_volume(predict_slice, arr, label)
            out = sitk.GetImageFromArray(mask)
            out.CopyInformation(image)
            sitk.WriteImage(out, str(tmp / f"{row.case_id}.nii.gz"), useCompression=True)
            if box is None:
                log.warning("%s: the reference label %s has no foreground: no prompt, empty mask", row.case_id, row.label)
            rows.append({"case_id": row.case_id, "prompted": "yes" if box else "no",
                         **({k: getattr(box, k) for k in Box.__dataclass_fields__} if box else {}),
                         "slices": (box.z_max - box.z_min + 1) if box else 0, "seconds": round(time.time() - t0, 2)})
            log.info("%d/%d %s: %d slices in %.1f s", i, len(cases), row.case_id, rows[-1]["slices"], rows[-1]["seconds"])
        table = pd.DataFrame(rows, columns=["case_id", "prompted", *Box.__dataclass_fields__, "slices", "seconds"])
        table.to_csv(tmp / "prompts.tsv", sep="\t", index=False)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="SAM / MedSAM with the reference label's bounding box as prompt.")
    ap.add_argument("--cases", required=True, help="TSV with columns case_id, image, label")
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--model-type", required=True, choices=MODEL_TYPES, help="SAM: vit_h; MedSAM: vit_b")
    ap.add_argument("--checkpoint", required=True, help="the model's .pth file")
    ap.add_argument("--out", required=True, help="folder of masks <case_id>.nii.gz (+ prompts.tsv)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        cases = pd.read_csv(args.cases, sep="\t", dtype=str)
        sam = load_model(args.method, args.model_type, args.checkpoint, pick_device(args.device))
        predict_cases(sam, args.method, cases, args.out)
    except InputError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

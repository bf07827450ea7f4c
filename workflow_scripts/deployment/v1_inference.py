"""nnU-Net v1's inference, for models imported from v1 (bundles with ``inference_semantics: v1``).

nnU-Net v2's predictor run on converted v1 weights gives close but different masks on scans that
need resampling (Dice 0.976-0.987 against v1's own, docs/facts.md §9), because the two differ in their
order of operations. This module follows v1 (``nnunet.inference.predict.predict_cases`` with
``GenericPreprocessor`` and ``save_segmentation_nifti_from_softmax``), step by step:

1. read with SimpleITK: array (z, y, x), spacing reversed to (z, y, x); the direction is not used
   (v1 writes the mask back with the scan's own origin, spacing and direction);
2. crop to the nonzero box (holes filled), transpose by ``transpose_forward``;
3. resample to the target spacing (order 3; order 0 along a separate axis when anisotropic; the
   nonzero mask with order 1), THEN normalise: z-score (inside the resampled nonzero mask when
   ``use_mask_for_norm``, 0 outside) or CT (clip to the 0.5/99.5 percentiles, (x - mean) / sd);
4. sliding window over the image padded to at least the patch: softmax probabilities of each tile
   (averaged over the 8 mirrored copies with mirroring), weighted by a Gaussian (when there is more
   than one tile) and averaged; folds averaged;
5. probabilities transposed back and resampled to the cropped scan's grid (order 1; order 0 along a
   separate axis), THEN the argmax, pasted into the crop box of the scan's grid;
6. v1's postprocessing (keep the largest connected component of the listed classes).

v2's library functions are used where they compute exactly what v1 did (nonzero crop, resampling of
an array to a shape, sliding-window steps, Gaussian, export resampling in slabs from resampling.py);
the tests check masks and probabilities against v1's own predictor (``tests/test_v1_inference.py``).
All arithmetic is float32 on any device (v1 used float16 on GPUs).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.common.atomic import atomic_path

log = logging.getLogger(__name__)

ANISO_THRESHOLD = 3  # v1's RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD


@dataclass
class V1Plan:
    """The v1 parameters of an imported model (``plans.json["panseg_v1"]`` and bundle.json)."""

    target_spacing: list[float]  # transposed axis order, as v1's plans
    patch_size: list[int]
    transpose_forward: list[int]
    transpose_backward: list[int]
    normalization_schemes: list[str]  # CT | nonCT | noNorm
    use_mask_for_norm: list[bool]
    intensity_properties: list[dict]
    num_classes: int
    export: dict = field(default_factory=lambda: {"force_separate_z": None, "interpolation_order": 1,
                                                  "interpolation_order_z": 0})
    postprocessing: dict | None = None  # {for_which_classes, min_valid_object_sizes: [[class, mL], ...] | None}

    @classmethod
    def from_plans(cls, plans: dict, postprocessing: dict | None = None) -> "V1Plan":
        v1 = plans["panseg_v1"]
        export = v1.get("segmentation_export_params") or {}
        return cls(target_spacing=[float(s) for s in v1["target_spacing"]],
                   patch_size=[int(p) for p in v1["patch_size"]],
                   transpose_forward=list(v1["transpose_forward"]), transpose_backward=list(v1["transpose_backward"]),
                   normalization_schemes=list(v1["normalization_schemes"]),
                   use_mask_for_norm=[bool(m) for m in v1["use_mask_for_norm"]],
                   intensity_properties=list(v1["intensity_properties"]), num_classes=int(v1["num_classes"]),
                   export={"force_separate_z": export.get("force_separate_z"),
                           "interpolation_order": export.get("interpolation_order", 1),
                           "interpolation_order_z": export.get("interpolation_order_z", 0)},
                   postprocessing=postprocessing)


# ---- 1-3: reading and preprocessing ---------------------------------------------------------
def read_case(files: list[str]) -> tuple[np.ndarray, dict]:
    """v1's reader: (c, z, y, x) float32 and the geometry to write the mask back with."""
    images = [sitk.ReadImage(str(f)) for f in files]
    first = images[0]
    props = {"original_size_of_raw_data": np.array(first.GetSize())[[2, 1, 0]],
             "original_spacing": np.array(first.GetSpacing())[[2, 1, 0]],
             "itk_origin": first.GetOrigin(), "itk_spacing": first.GetSpacing(), "itk_direction": first.GetDirection()}
    data = np.vstack([sitk.GetArrayFromImage(im)[None] for im in images]).astype(np.float32)
    return data, props


def preprocess(data: np.ndarray, props: dict, plan: V1Plan) -> tuple[np.ndarray, dict]:
    """v1's GenericPreprocessor.preprocess_test_case: crop, transpose, resample, then normalise."""
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape,
        determine_do_sep_z_and_axis,
        resample_data_or_seg,
    )

    data, seg, bbox = crop_to_nonzero(data, None, nonzero_label=-1)
    props["crop_bbox"] = [list(map(int, b)) for b in bbox]
    props["size_after_cropping"] = data[0].shape
    tf = plan.transpose_forward
    data = data.transpose((0, *[i + 1 for i in tf]))
    seg = seg.transpose((0, *[i + 1 for i in tf]))
    spacing_t = np.array(props["original_spacing"])[tf]
    target = np.array(plan.target_spacing)
    data[np.isnan(data)] = 0
    new_shape = compute_new_shape(data.shape[1:], spacing_t, target)
    separate_z, axis = determine_do_sep_z_and_axis(None, spacing_t, target, ANISO_THRESHOLD)
    data = resample_data_or_seg(data, new_shape, False, axis, 3, separate_z, order_z=0)
    seg = resample_data_or_seg(seg, new_shape, True, axis, 1, separate_z, order_z=0)
    props["size_after_resampling"] = data[0].shape
    props["spacing_after_resampling"] = target
    for c, scheme in enumerate(plan.normalization_schemes):
        p = plan.intensity_properties[c] if c < len(plan.intensity_properties) else {}
        if scheme == "CT":
            data[c] = np.clip(data[c], np.float64(p["percentile_00_5"]), np.float64(p["percentile_99_5"]))
            data[c] = (data[c] - np.float64(p["mean"])) / np.float64(p["sd"])
            if plan.use_mask_for_norm[c]:
                data[c][seg[-1] < 0] = 0
        elif scheme == "noNorm":
            pass
        elif plan.use_mask_for_norm[c]:
            mask = seg[-1] >= 0
            data[c][mask] = (data[c][mask] - data[c][mask].mean()) / (data[c][mask].std() + 1e-8)
            data[c][mask == 0] = 0
        else:
            mn, std = data[c].mean(), data[c].std()
            data[c] = (data[c] - mn) / (std + 1e-8)
    return data.astype(np.float32), props


# ---- 4: sliding window ----------------------------------------------------------------------
MIRRORS = [(), (4,), (3,), (4, 3), (2,), (4, 2), (3, 2), (4, 3, 2)]  # v1's order of the 8 mirrored passes


def _tile_probabilities(network, x, mirroring: bool):
    import torch

    result = torch.zeros((1, network.decoder.num_classes, *x.shape[2:]), dtype=torch.float, device=x.device)
    flips = MIRRORS if mirroring else MIRRORS[:1]
    for dims in flips:
        inp = torch.flip(x, dims) if dims else x
        pred = torch.softmax(network(inp), 1)
        result += 1 / len(flips) * (torch.flip(pred, dims) if dims else pred)
    return result


def sliding_window_probabilities(network, data: np.ndarray, patch_size, step_size: float, mirroring: bool,
                                 device) -> np.ndarray:
    """v1's _internal_predict_3D_3Dconv_tiled (Gaussian, no regions): class probabilities, float32."""
    import torch
    from batchgenerators.augmentations.utils import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    patch_size = [int(p) for p in patch_size]
    padded, slicer = pad_nd_image(data, patch_size, "constant", {"constant_values": 0}, True, None)
    steps = compute_steps_for_sliding_window(padded.shape[1:], patch_size, step_size)
    n_tiles = int(np.prod([len(s) for s in steps]))
    n_classes = network.decoder.num_classes
    if n_tiles > 1:
        gaussian = compute_gaussian(tuple(patch_size), 1.0 / 8, 1, torch.float32, torch.device("cpu")).numpy()
        weight = torch.from_numpy(gaussian).to(device)
    else:
        gaussian, weight = np.ones(patch_size, dtype=np.float32), None
    aggregated = np.zeros((n_classes, *padded.shape[1:]), dtype=np.float32)
    counts = np.zeros((n_classes, *padded.shape[1:]), dtype=np.float32)
    tensor = torch.from_numpy(padded)
    with torch.no_grad():
        for x0 in steps[0]:
            for y0 in steps[1]:
                for z0 in steps[2]:
                    box = (slice(x0, x0 + patch_size[0]), slice(y0, y0 + patch_size[1]), slice(z0, z0 + patch_size[2]))
                    tile = tensor[(None, slice(None), *box)].to(device)
                    pred = _tile_probabilities(network, tile, mirroring)
                    if weight is not None:
                        pred[:, :] *= weight
                    aggregated[(slice(None), *box)] += pred[0].cpu().numpy()
                    counts[(slice(None), *box)] += gaussian
    region = tuple([slice(0, aggregated.shape[0])] + list(slicer[1:]))
    aggregated = aggregated[region]
    aggregated /= counts[region]
    return aggregated


# ---- 5-6: export and postprocessing ---------------------------------------------------------
def export_probabilities(probabilities: np.ndarray, props: dict, plan: V1Plan) -> np.ndarray:
    """Probabilities in the cropped scan's grid (v1's save_segmentation_nifti_from_softmax, before the argmax)."""
    from workflow_scripts.nnunet.resampling import resample_logits_to_shape

    probabilities = probabilities.transpose([0] + [i + 1 for i in plan.transpose_backward])
    target_shape = props["size_after_cropping"]
    if tuple(probabilities.shape[1:]) == tuple(target_shape):
        return probabilities
    # v1 decides the separate axis from the scan's spacing, else from spacing_after_resampling (which is in
    # the transposed order: a v1 quirk kept here); resample_logits_to_shape checks them in that order
    return resample_logits_to_shape(probabilities, target_shape, props["original_spacing"],
                                    props["spacing_after_resampling"], False, plan.export["interpolation_order"],
                                    plan.export["interpolation_order_z"], plan.export["force_separate_z"],
                                    ANISO_THRESHOLD)


def mask_from_probabilities(probabilities: np.ndarray, props: dict) -> np.ndarray:
    """argmax, pasted into the crop box of the scan's grid (uint8, z y x)."""
    seg = probabilities.argmax(0)
    full = np.zeros(props["original_size_of_raw_data"], dtype=np.uint8)
    box = props["crop_bbox"]
    ends = [min(box[c][0] + seg.shape[c], full.shape[c]) for c in range(3)]
    full[box[0][0]:ends[0], box[1][0]:ends[1], box[2][0]:ends[2]] = seg
    return full


def keep_largest_components(mask: np.ndarray, for_which_classes, voxel_volume: float, min_sizes=None) -> np.ndarray:
    """v1's remove_all_but_the_largest_connected_component: per class (or joint region), every object
    but the largest (ties all kept) is removed, or only those below ``min_sizes[class]`` mm³ when given."""
    from scipy.ndimage import label

    sizes = {json.dumps(k): v for k, v in (min_sizes or [])}
    for c in for_which_classes:
        region = np.isin(mask, c) if isinstance(c, (list, tuple)) else mask == c
        lmap, n = label(region.astype(int))
        if n == 0:
            continue
        volumes = np.bincount(lmap.ravel(), minlength=n + 1)[1:] * voxel_volume
        largest = volumes.max()
        for obj in range(1, n + 1):
            if volumes[obj - 1] != largest:
                limit = sizes.get(json.dumps(c))
                if min_sizes is None or (limit is not None and volumes[obj - 1] < limit):
                    mask[(lmap == obj) & region] = 0
    return mask


# ---- the predictor --------------------------------------------------------------------------
class V1Predictor:
    """A fold ensemble run with v1's semantics. ``predict_from_files_sequential`` takes the same
    arguments as nnU-Net v2's predictor, so ``predict.predict_cases`` runs either."""

    def __init__(self, network, parameters: list[dict], plan: V1Plan, device, mirroring: bool, step_size: float):
        self.network, self.parameters, self.plan = network.to(device).eval(), parameters, plan
        self.device, self.mirroring, self.step_size = device, bool(mirroring), float(step_size)

    def probabilities(self, files: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
        """(probabilities in the network's grid, probabilities in the scan's grid (cropped), properties)."""
        data, props = read_case(files)
        data, props = preprocess(data, props, self.plan)
        total = None
        for params in self.parameters:
            self.network.load_state_dict(params)
            p = sliding_window_probabilities(self.network, data, self.plan.patch_size, self.step_size,
                                             self.mirroring, self.device)
            total = p if total is None else total + p
        if len(self.parameters) > 1:
            total /= len(self.parameters)
        return total, export_probabilities(total, props, self.plan), props

    def predict_case(self, files: list[str], out_file) -> Path:
        t0 = time.time()
        _, probabilities, props = self.probabilities(files)
        mask = mask_from_probabilities(probabilities, props)
        del probabilities
        pp = self.plan.postprocessing
        if pp and pp.get("for_which_classes"):
            mask = keep_largest_components(mask, pp["for_which_classes"], float(np.prod(props["itk_spacing"])),
                                           pp.get("min_valid_object_sizes"))
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.SetSpacing(props["itk_spacing"])
        image.SetOrigin(props["itk_origin"])
        image.SetDirection(props["itk_direction"])
        out_file = Path(out_file)
        with atomic_path(out_file) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        log.debug("%s: %.1f s", out_file, time.time() - t0)
        return out_file

    def predict_from_files_sequential(self, list_of_lists, output_filenames_truncated, save_probabilities=False,
                                      overwrite=True, folder_with_segs_from_prev_stage=None):
        for files, out in zip(list_of_lists, output_filenames_truncated):
            self.predict_case(files, f"{out}.nii.gz")


def load_v1_ensemble(model_folder, fold_checkpoints, trainer_path: str, device, mirroring: bool, step_size: float,
                     postprocessing: dict | None = None) -> V1Predictor:
    """A V1Predictor for an extracted imported bundle (plans.json with ``panseg_v1``)."""
    from workflow_scripts.nnunet.predict import load_checkpoint
    from workflow_scripts.deployment.v1_import import build_network

    model_folder = Path(model_folder)
    plans = json.loads((model_folder / "plans.json").read_text())
    dataset = json.loads((model_folder / "dataset.json").read_text())
    if "panseg_v1" not in plans:
        raise ValueError(f"{model_folder / 'plans.json'}: no 'panseg_v1' section; v1 semantics need an imported model")
    network = build_network(plans, dataset, trainer_path)
    parameters = [load_checkpoint(ck)["network_weights"] for ck in fold_checkpoints]
    return V1Predictor(network, parameters, V1Plan.from_plans(plans, postprocessing), device, mirroring, step_size)

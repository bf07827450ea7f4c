"""Predict masks with a fold ensemble through nnU-Net v2's predictor, without trainer name lookup.

The network comes from the trainer class's own ``build_network_architecture`` (deep supervision
off); the fold checkpoints are loaded with ``torch.load(weights_only=True)`` (no arbitrary pickled
code) and handed to ``nnUNetPredictor.manual_initialization``. Masks are written as NIfTI in each
scan's original geometry, one file per case, named ``<case_id>.nii.gz``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.nnunet.env import configure

log = logging.getLogger(__name__)


def load_checkpoint(path):
    """Load an nnU-Net checkpoint refusing arbitrary pickled objects.

    nnU-Net's checkpoints hold tensors, plain Python containers and numpy scalars (logged
    metrics); only numpy's scalar/dtype reconstructors are allowed besides torch's defaults.
    """
    import torch

    allowed = [np._core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in ("f4", "f8", "i8", "i4", "b1")}]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


# PyTorch's CPU convolution uses oneDNN for a batch of one only when channels x depth x height of
# its input exceed 20480 (ATen's use_mkldnn heuristic); below that it runs a slow im2col kernel.
# The demo's networks (8 features at full resolution, small patches) fall below it.
ONEDNN_MIN_CDH = 20480


def duplicate_tiles(configuration_manager, device) -> bool:
    """Whether CPU prediction is faster with each tile sent twice in one batch (see _predictor_class).

    Measured for the demo's 3-D network (features 8..64, patch 24x48x56, 2 cores): one tile 0.34 s,
    a batch of two 0.07 s. Large networks already take oneDNN for one tile and are left alone.
    """
    features = configuration_manager.network_arch_init_kwargs.get("features_per_stage")
    patch = configuration_manager.patch_size
    return device.type == "cpu" and bool(features) and features[0] * patch[0] * patch[1] <= ONEDNN_MIN_CDH


@functools.cache
def _predictor_class():
    """nnU-Net's predictor that can send each sliding-window tile twice (batch of two) on the CPU.

    Defined on first use: nnunetv2 must be imported after ``nnunet_env.configure``. Each sample of
    the batch is computed independently (instance norm, convolutions), so the tile's logits are the
    same up to float rounding; the second copy is dropped.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class Predictor(nnUNetPredictor):
        duplicate_tiles = False

        @torch.inference_mode()
        def _internal_maybe_mirror_and_predict(self, x):
            if self.duplicate_tiles and x.shape[0] == 1:
                return super()._internal_maybe_mirror_and_predict(torch.cat([x, x]))[:1]
            return super()._internal_maybe_mirror_and_predict(x)

    return Predictor


def make_predictor(network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name: str,
                   device, mirroring: bool, mirror_axes, step_size: float = 0.5):
    """nnU-Net's predictor around a built network and a list of state dicts (one per fold)."""
    from workflow_scripts.nnunet.resampling import lean_configuration

    if mirroring and mirror_axes is None:
        mirror_axes = tuple(range(len(configuration_manager.patch_size)))
    configuration_manager = lean_configuration(configuration_manager)  # same masks, less memory
    predictor = _predictor_class()(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
                                   perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network.to(device), plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, mirror_axes if mirroring else None)
    predictor.duplicate_tiles = duplicate_tiles(configuration_manager, device)
    return predictor


def load_ensemble(model_folder, fold_checkpoints, trainer_path: str, configuration: str, device,
                  mirroring: bool = False, step_size: float = 0.5):
    """An nnUNetPredictor holding every fold's weights (fold logits are averaged, as nnU-Net does)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from workflow_scripts.trainers import load_trainer_class

    model_folder = Path(model_folder)
    plans_manager = PlansManager(json.loads((model_folder / "plans.json").read_text()))
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    conf = plans_manager.get_configuration(configuration)
    trainer_cls = load_trainer_class(trainer_path)
    parameters, mirror_axes = [], None
    for ck_path in fold_checkpoints:
        ck = load_checkpoint(ck_path)
        parameters.append(ck["network_weights"])
        mirror_axes = ck.get("inference_allowed_mirroring_axes")
    n_in = determine_num_input_channels(plans_manager, conf, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer_cls.build_network_architecture(plans_manager, conf, n_in, n_out, enable_deep_supervision=False)
    return make_predictor(network, plans_manager, conf, parameters, dataset_json, trainer_cls.__name__, device,
                          mirroring, mirror_axes, step_size)


def predict_cases(predictor, cases: pd.DataFrame, out_dir) -> pd.DataFrame:
    """Predict each case's image into out_dir/<case_id>.nii.gz; return per-case timings."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row in enumerate(cases.sort_values("case_id").itertuples(), 1):
        t0 = time.time()
        predictor.predict_from_files_sequential([[str(Path(row.image).resolve())]], [str(out_dir / row.case_id)],
                                                save_probabilities=False, overwrite=True)
        rows.append(dict(case_id=row.case_id, seconds=round(time.time() - t0, 2)))
        log.info("predicted %d/%d %s in %.1f s", i, len(cases), row.case_id, rows[-1]["seconds"])
    for extra in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
        (out_dir / extra).unlink(missing_ok=True)  # nnU-Net writes these beside the masks
    return pd.DataFrame(rows)


def fold_cases(cases: pd.DataFrame, splits_file, fold: int) -> pd.DataFrame:
    """The rows of `cases` that fold `fold` of the splits held out (its out-of-fold cases).

    Every held-out case must be in the tables: a split and tables that disagree is an error.
    """
    splits = json.loads(Path(splits_file).read_text())
    if not 0 <= fold < len(splits):
        raise ValueError(f"{splits_file}: has {len(splits)} folds, fold {fold} requested")
    val = set(splits[fold]["val"])
    missing = sorted(val - set(cases.case_id))
    if missing:
        raise ValueError(f"{splits_file}: fold {fold} holds out {len(missing)} cases missing from the case tables, "
                         f"e.g. {missing[:3]}")
    return cases[cases.case_id.isin(val)]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Segment scans with one model (a fold ensemble, or one fold's "
                                             "checkpoint for its out-of-fold cases).")
    ap.add_argument("--cases", nargs="+", required=True, help="case tables (TSV with case_id, image)")
    ap.add_argument("--splits", help="splits JSON: with --fold, predict only the cases this fold held out")
    ap.add_argument("--fold", type=int)
    ap.add_argument("--model-folder", required=True, help="folder with plans.json and dataset.json")
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--configuration", default="3d_fullres")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--mirroring", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--step-size", type=float, default=0.5)
    args = ap.parse_args(argv)
    if (args.splits is None) != (args.fold is None):
        ap.error("--splits and --fold go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cases = pd.concat([pd.read_csv(f, sep="\t", dtype=str) for f in args.cases], ignore_index=True)
    if args.splits:
        cases = fold_cases(cases, args.splits, args.fold)
    configure(threads=args.threads)
    from workflow_scripts.common.atomic import atomic_dir
    from workflow_scripts.nnunet.devices import pick_device

    predictor = load_ensemble(args.model_folder, args.checkpoints, args.trainer, args.configuration,
                              pick_device(args.device), args.mirroring, args.step_size)
    # Masks appear only when every case is done: a failed job leaves no partial folder.
    with atomic_dir(args.out) as tmp:
        timings = predict_cases(predictor, cases, tmp)
        timings.to_csv(tmp / "timings.tsv", sep="\t", index=False)
    log.info("%d masks in %s", len(cases), args.out)


if __name__ == "__main__":  # nnU-Net may start worker processes with spawn: keep this guard
    sys.exit(main())

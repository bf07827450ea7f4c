"""Import a trained nnU-Net v1 model (the released PanSegNet weights) as a bundle of this workflow.

    python -m workflow_scripts.bundle import-v1 --model-dir <Trainer>__nnUNetPlansv2.1 [--plans plans.pkl] \
        --modality T1 --model pansegnet --out panseg_T1_released.tar

A v1 trained model folder holds ``plans.pkl``, ``postprocessing.json`` and
``fold_<k>/model_final_checkpoint.model`` (a torch dict with ``state_dict``) plus ``.model.pkl``
(a pickle: constructor arguments, trainer name, plans). nnU-Net v2 cannot read it. Here:

- **Loading runs no pickled code.** ``.pkl`` files go through an unpickler that only rebuilds plain
  data (dicts, lists, numpy arrays and scalars); ``.model`` through ``torch.load(weights_only=True)``
  with numpy's scalar and array types allow-listed (under their numpy 1 and 2 names).
- **Plans** come from ``plans.pkl``, else from the plans inside ``model_final_checkpoint.model.pkl``
  (the released folders lack plans.pkl), else from ``--plans``; they become v2 ``plans.json``
  (network, patch, spacing, normalisation) and ``dataset.json``, and the v1 parameters that v1's
  inference needs go to ``plans.json["panseg_v1"]`` (``v1_inference.py`` reads them).
- **Weights**: v1 ``Generic_UNet`` keys map onto nnU-Net v2's ``PlainConvUNet`` (docs/facts.md §9), PanSegNet's
  ``self_atten.*`` onto ``models.efficient_attention.BottleneckTransformer`` (q, k, v concatenated into
  one projection; the released fixed-length positional code as ``positional_encoding: legacy_1d``;
  LayerNorm eps 1e-6; 8 heads as the released code fixes). Every v1 tensor is used exactly once and
  every v2 tensor is filled (v1 has no bias in the transposed convolutions and 1x1 output heads:
  zeros), shapes must agree, or the import stops naming the first tensor that does not fit. v1's
  decoder takes the kernel of the stage below; where that differs from v2's choice (anisotropic
  plans) the plans carry per-stage decoder kernels (``models.decoder_kernels``).
- ``postprocessing.json`` (largest connected component) is taken from the model folder or, as in
  the released folders, from ``fold_<k>/``; v1 applied it, so the bundle's inference does too.
- The fold's validation cases (``fold_<k>/validation_raw/summary.json``, or the masks there) are
  recorded in bundle.json as ``v1_validation_cases``, so the cases the model saw in training can be
  told from those it did not.

The bundle (format 2, ``inference_semantics: v1``) is written atomically and verified by extracting
it and loading every fold into the rebuilt network before the archive gets its final name.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from workflow_scripts.common.errors import InputError

log = logging.getLogger(__name__)

CHECKPOINT = "model_final_checkpoint.model"
# v1 trainer class -> network it builds. Other trainers (LinTransUNet, ...) build other networks.
V1_TRAINERS = {"nnUNetTrainerV2": "unet", "nnTransUNetTrainerV2": "pansegnet"}
V2_TRAINERS = {"unet": "workflow_scripts.trainers.nnunet:NnUNetTrainer",
               "pansegnet": "workflow_scripts.trainers.pansegnet:PanSegNetTrainer"}
RELEASED_HEADS = 8  # the released SelfAtten3DBlock fixes nhead=8 (not recorded in the weights)
RELEASED_DROPOUT = 0.3
RELEASED_LAYER_NORM_EPS = 1e-6
MAX_FEATURES_3D = 320  # Generic_UNet.MAX_NUM_FILTERS_3D
V1_NORMALIZATION = {"CT": "CTNormalization", "nonCT": "ZScoreNormalization", "noNorm": "NoNormalization"}
PLANS_HINT = ("supply the plans with --plans: nnU-Net v1 writes them as nnUNetPlansv2.1_plans_3D.pkl in the task's "
              "preprocessed folder (nnUNet_preprocessed/Task<ID>_<name>/), and as plans.pkl in the trained model folder")


class V1ImportError(InputError):
    """A v1 model folder that cannot be imported; the message names the file and the problem."""


# ---- loading without running pickled code ---------------------------------------------------
class PlainDataUnpickler(pickle.Unpickler):
    """Rebuilds only plain data: Python containers, OrderedDict, numpy arrays, dtypes and scalars."""

    ALLOWED = {("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
               ("numpy._core.numeric", "_frombuffer"), ("builtins", "set"), ("builtins", "frozenset"),
               ("builtins", "complex"), ("_codecs", "encode")}  # protocol-2 pickles spell bytes via _codecs.encode

    def find_class(self, module, name):
        module = re.sub(r"^numpy\.core(?=\.|$)", "numpy._core", module)  # pickles written with numpy 1
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is read from v1 files")


def load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return PlainDataUnpickler(f).load()
    except FileNotFoundError:
        raise V1ImportError(path, "file does not exist") from None
    except Exception as exc:  # UnpicklingError, EOFError, ... on a damaged or hostile file
        raise V1ImportError(path, f"cannot be read as plain-data pickle ({type(exc).__name__}: {exc})") from None


def _torch_safe_globals():
    """numpy types a v1 checkpoint holds (logged losses as numpy scalars), under numpy 2 and numpy 1 names."""
    objs = [np._core.multiarray.scalar, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
            *{type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1")}]
    old = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
           (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    return objs + old


def load_v1_checkpoint(path: Path) -> dict:
    """The ``state_dict`` of a v1 ``.model`` file, loaded with ``torch.load(weights_only=True)``."""
    import torch

    if not path.is_file():
        raise V1ImportError(path, "file does not exist")
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise V1ImportError(path, f"cannot be loaded as a weights-only torch checkpoint ({type(exc).__name__}: "
                                  f"{first})") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("state_dict"), dict):
        raise V1ImportError(path, "is not an nnU-Net v1 checkpoint (no 'state_dict')")
    bad = [k for k, v in ck["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise V1ImportError(path, f"state_dict entry {bad[0]!r} is not a tensor")
    return {k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}


# ---- the folder -----------------------------------------------------------------------------
def find_folds(model_dir: Path) -> list[tuple[int, Path]]:
    """(fold, checkpoint) for every fold_<k> folder; a fold folder without its checkpoint is an error."""
    if not model_dir.is_dir():
        raise V1ImportError(model_dir, "model folder does not exist")
    folds = []
    for d in sorted(model_dir.iterdir()):
        m = re.fullmatch(r"fold_(\d+)", d.name)
        if d.is_dir() and m:
            ck = d / CHECKPOINT
            if not ck.is_file():
                raise V1ImportError(ck, f"file does not exist: fold {m.group(1)} has no final checkpoint "
                                        "(an unfinished or incomplete download?)")
            folds.append((int(m.group(1)), ck))
    if not folds:
        raise V1ImportError(model_dir, f"has no fold_<k>/{CHECKPOINT}: not an nnU-Net v1 trained model folder "
                                       "(expected <Trainer>__<Plans>/fold_0/...)")
    return sorted(folds)


def model_info(checkpoint: Path) -> dict | None:
    """The ``.model.pkl`` beside a checkpoint ({init, name, class, plans}), or None if absent."""
    pkl = checkpoint.with_name(checkpoint.name + ".pkl")
    if not pkl.exists():
        return None
    info = load_pickle(pkl)
    if not isinstance(info, dict) or "name" not in info:
        raise V1ImportError(pkl, "is not an nnU-Net v1 .model.pkl (no trainer 'name')")
    return info


def trainer_name(model_dir: Path, infos: dict[int, dict | None]) -> tuple[str, Path]:
    for fold, info in infos.items():
        if info:
            return str(info["name"]), model_dir / f"fold_{fold}" / f"{CHECKPOINT}.pkl"
    return model_dir.name.split("__")[0], model_dir


def resolve_plans(model_dir: Path, infos: dict[int, dict | None], plans_file: Path | None) -> tuple[dict, str]:
    """v1 plans and where they came from: plans.pkl, else a .model.pkl's plans, else --plans."""
    own = model_dir / "plans.pkl"
    if own.is_file():
        source, plans = own, load_pickle(own)
    else:
        source, plans = None, None
        for fold, info in infos.items():
            if info and isinstance(info.get("plans"), dict):
                source, plans = model_dir / f"fold_{fold}" / f"{CHECKPOINT}.pkl", info["plans"]
                break
        if plans is None and plans_file is not None:
            source, plans = plans_file, load_pickle(plans_file)
    if plans is None:
        raise V1ImportError(own, f"no plans: neither {own.name} nor the plans inside fold_<k>/{CHECKPOINT}.pkl "
                                 f"exist; {PLANS_HINT}")
    if plans_file is not None and Path(plans_file) != source:
        log.warning("--plans %s not used: the plans of %s come first", plans_file, source)
    if not isinstance(plans, dict) or "plans_per_stage" not in plans:
        raise V1ImportError(source, "is not an nnU-Net v1 plans file (no 'plans_per_stage')")
    return plans, str(source)


def _stage(plans: dict, infos: dict[int, dict | None], source: str) -> dict:
    """The plans of the stage the model was trained on (3d_fullres: the last stage)."""
    stages = plans["plans_per_stage"]
    keys = sorted(stages.keys())
    stage = keys[-1]
    for info in infos.values():
        init = (info or {}).get("init")
        if isinstance(init, (list, tuple)) and len(init) > 5 and init[5] is not None:
            stage = init[5]
            break
    if stage not in stages:
        raise V1ImportError(source, f"plans have no stage {stage!r} (stages: {keys})")
    return stages[stage]


def find_postprocessing(model_dir: Path, folds: list[int]) -> tuple[dict | None, str | None]:
    """v1's postprocessing.json: the model folder's (what v1 applies), else a fold's (released folders)."""
    for path in [model_dir / "postprocessing.json", *(model_dir / f"fold_{k}" / "postprocessing.json" for k in folds)]:
        if path.is_file():
            try:
                pp = json.loads(path.read_text())
                classes = pp["for_which_classes"]
                sizes = pp.get("min_valid_object_sizes")
                sizes = ast.literal_eval(sizes) if isinstance(sizes, str) else sizes  # v1 stores a dict's repr
            except (ValueError, KeyError, SyntaxError, TypeError) as exc:
                raise V1ImportError(path, f"is not a v1 postprocessing file ({type(exc).__name__}: {exc})") from None
            if not isinstance(classes, list) or not (sizes is None or isinstance(sizes, dict)):
                raise V1ImportError(path, "for_which_classes must be a list and min_valid_object_sizes a dict or null")
            return {"for_which_classes": classes,
                    "min_valid_object_sizes": None if sizes is None else [[list(k) if isinstance(k, tuple) else k, v]
                                                                          for k, v in sizes.items()],
                    "source": str(path.relative_to(model_dir))}, str(path)
    return None, None


def validation_cases(fold_dir: Path) -> tuple[list[str], str] | None:
    """The fold's validation cases as v1 listed them, or None."""
    summary = fold_dir / "validation_raw" / "summary.json"
    if summary.is_file():
        try:
            rows = json.loads(summary.read_text())["results"]["all"]
            names = sorted({re.sub(r"\.nii(\.gz)?$", "", Path(r.get("reference") or r["test"]).name) for r in rows})
        except (ValueError, KeyError, TypeError) as exc:
            raise V1ImportError(summary, f"cannot read the validation cases ({type(exc).__name__}: {exc})") from None
        return names, str(summary.relative_to(fold_dir.parent))
    masks = sorted(p.name.removesuffix(".nii.gz") for p in (fold_dir / "validation_raw").glob("*.nii.gz"))
    if masks:
        return masks, str((fold_dir / "validation_raw").relative_to(fold_dir.parent))
    return None


# ---- plans v1 -> v2 -------------------------------------------------------------------------
def _ints(x) -> list[int]:
    return [int(v) for v in np.asarray(x).ravel()]


def _floats(x) -> list[float]:
    return [float(v) for v in np.asarray(x).ravel()]


def _py(x):
    """numpy values and containers -> JSON-able Python."""
    if isinstance(x, dict):
        return {str(k): _py(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_py(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


class Network:
    """What the v1 plans say about the U-Net (in v1's transposed axis order)."""

    def __init__(self, plans: dict, stage: dict, source: str):
        try:
            self.patch_size = _ints(stage["patch_size"])
            self.pool = [_ints(p) for p in stage["pool_op_kernel_sizes"]]
            self.conv = [_ints(k) for k in stage["conv_kernel_sizes"]]
            self.spacing = _floats(stage["current_spacing"])
            self.base = int(plans["base_num_features"])
            self.cps = int(plans.get("conv_per_stage", 2))
            self.n_in = int(plans["num_modalities"])
            self.n_classes = int(plans["num_classes"]) + 1  # v1 counts foreground classes only
        except (KeyError, TypeError, ValueError) as exc:
            raise V1ImportError(source, f"plans lack or garble a field the network needs ({exc!r})") from None
        self.n_pool = len(self.pool)
        if len(self.conv) != self.n_pool + 1 or len(self.patch_size) != 3:
            raise V1ImportError(source, f"plans: {len(self.conv)} conv kernels for {self.n_pool} pooling steps, "
                                        f"patch {self.patch_size}: not a 3-D Generic_UNet plan")
        self.features = [min(self.base * 2**d, MAX_FEATURES_3D) for d in range(self.n_pool + 1)]
        # v1 decoder stage u (lowest resolution first) convolves with conv kernel n_pool - u; v2 with n_pool - 1 - u
        self.decoder_kernels = [self.conv[self.n_pool - u] for u in range(self.n_pool)]
        self.v2_decoder_kernels = [self.conv[self.n_pool - 1 - u] for u in range(self.n_pool)]

    @property
    def bottleneck_tokens(self) -> int:
        return int(np.prod(self.patch_size) // np.prod(np.prod(self.pool, axis=0)))

    def arch_kwargs(self) -> dict:
        return {"n_stages": self.n_pool + 1, "features_per_stage": self.features,
                "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": self.conv,
                "strides": [[1, 1, 1], *self.pool], "n_conv_per_stage": [self.cps] * (self.n_pool + 1),
                "n_conv_per_stage_decoder": [self.cps] * self.n_pool, "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}


def v1_inference_params(plans: dict, stage: dict, net: Network, source: str) -> dict:
    """What v1's preprocessing and export need (``v1_inference.V1Plan``), JSON-able."""
    n = net.n_in
    schemes = plans.get("normalization_schemes") or {}
    mask = plans.get("use_mask_for_norm") or {}
    props = (plans.get("dataset_properties") or {}).get("intensityproperties") or {}
    out = {"target_spacing": net.spacing, "patch_size": net.patch_size,
           "transpose_forward": _ints(plans.get("transpose_forward", [0, 1, 2])),
           "transpose_backward": _ints(plans.get("transpose_backward", [0, 1, 2])),
           "normalization_schemes": [], "use_mask_for_norm": [], "intensity_properties": [],
           "segmentation_export_params": _py(plans.get("segmentation_export_params")),
           "preprocessor_name": plans.get("preprocessor_name") or "GenericPreprocessor",
           "num_classes": net.n_classes}
    if out["preprocessor_name"] != "GenericPreprocessor":
        raise V1ImportError(source, f"preprocessor {out['preprocessor_name']!r}: only v1's GenericPreprocessor "
                                    "(3d_fullres) is reproduced")
    for c in range(n):
        scheme = schemes.get(c, schemes.get(str(c)))
        if scheme not in V1_NORMALIZATION:
            raise V1ImportError(source, f"normalization scheme {scheme!r} of channel {c} is not one of "
                                        f"{sorted(V1_NORMALIZATION)}")
        out["normalization_schemes"].append(scheme)
        out["use_mask_for_norm"].append(bool(mask.get(c, mask.get(str(c), False))))
        p = props.get(c, props.get(str(c))) or {}
        if scheme == "CT" and not all(k in p for k in ("mean", "sd", "percentile_00_5", "percentile_99_5")):
            raise V1ImportError(source, f"CT normalisation of channel {c} needs dataset_properties.intensityproperties "
                                        "(mean, sd, percentile_00_5, percentile_99_5)")
        out["intensity_properties"].append({k: float(p[k]) for k in ("mean", "sd", "median", "mn", "mx",
                                                                     "percentile_00_5", "percentile_99_5") if k in p})
    return out


def v2_plans(plans: dict, stage: dict, net: Network, v1: dict, network_options: dict | None, name: str) -> dict:
    conf = {
        "data_identifier": f"{name}_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(stage.get("batch_size", 2)),
        "patch_size": net.patch_size, "spacing": net.spacing,
        "median_image_size_in_voxels": net.patch_size,
        "normalization_schemes": [V1_NORMALIZATION[s] for s in v1["normalization_schemes"]],
        "use_mask_for_norm": v1["use_mask_for_norm"],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": net.arch_kwargs(),
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": bool(plans.get("batch_dice", True)),
    }
    if net.decoder_kernels != net.v2_decoder_kernels:
        from workflow_scripts.models.decoder_kernels import DECODER_KERNELS_KEY

        conf[DECODER_KERNELS_KEY] = net.decoder_kernels
    intensity = {str(c): {"mean": p.get("mean"), "std": p.get("sd"), "median": p.get("median"), "min": p.get("mn"),
                          "max": p.get("mx"), "percentile_00_5": p.get("percentile_00_5"),
                          "percentile_99_5": p.get("percentile_99_5")} for c, p in enumerate(v1["intensity_properties"])}
    out = {"dataset_name": name, "plans_name": "nnUNetPlansv2.1 (imported from nnU-Net v1)",
           "original_median_spacing_after_transp": net.spacing,
           "original_median_shape_after_transp": net.patch_size, "image_reader_writer": "SimpleITKIO",
           "transpose_forward": v1["transpose_forward"], "transpose_backward": v1["transpose_backward"],
           "configurations": {"3d_fullres": conf}, "experiment_planner_used": "nnU-Net v1 (imported)",
           "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": intensity,
           "panseg_v1": v1}
    if network_options is not None:
        out["panseg_network"] = network_options
    return out


def dataset_json(plans: dict, net: Network) -> dict:
    modalities = (plans.get("dataset_properties") or {}).get("modalities") or {}
    channels = {str(c): str(modalities.get(c, modalities.get(str(c), "image"))) for c in range(net.n_in)}
    labels = {"background": 0}
    for k in range(1, net.n_classes):
        labels["pancreas" if net.n_classes == 2 else f"label_{k}"] = k  # v1 plans carry no label names
    return {"channel_names": channels, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz",
            "overwrite_image_reader_writer": "SimpleITKIO"}


def fingerprint_json(plans: dict, v1: dict) -> dict:
    props = {str(c): {"mean": p.get("mean"), "std": p.get("sd"), "median": p.get("median"), "min": p.get("mn"),
                      "max": p.get("mx"), "percentile_00_5": p.get("percentile_00_5"),
                      "percentile_99_5": p.get("percentile_99_5")} for c, p in enumerate(v1["intensity_properties"])}
    return {"foreground_intensity_properties_per_channel": props,
            "spacings": _py(plans.get("original_spacings", [])), "shapes_after_crop": _py(plans.get("original_sizes", [])),
            "note": "converted from nnU-Net v1 plans (dataset_properties)"}


# ---- weights v1 -> v2 -----------------------------------------------------------------------
def _conv_pairs(v1_prefix: str, v2_prefix: str) -> list[tuple[str, str]]:
    return [(f"{v1_prefix}.conv.{p}", f"{v2_prefix}.conv.{p}") for p in ("weight", "bias")] + \
           [(f"{v1_prefix}.instnorm.{p}", f"{v2_prefix}.norm.{p}") for p in ("weight", "bias")]


def unet_key_map(n_pool: int, cps: int, v2_prefix_enc: str = "encoder", v2_prefix_dec: str = "decoder") -> dict:
    """v2 key -> v1 key for Generic_UNet (docs/facts.md §9)."""
    pairs = []
    for d in range(n_pool):
        for j in range(cps):
            pairs += _conv_pairs(f"conv_blocks_context.{d}.blocks.{j}", f"{v2_prefix_enc}.stages.{d}.0.convs.{j}")
    for j in range(cps - 1):
        pairs += _conv_pairs(f"conv_blocks_context.{n_pool}.0.blocks.{j}", f"{v2_prefix_enc}.stages.{n_pool}.0.convs.{j}")
    pairs += _conv_pairs(f"conv_blocks_context.{n_pool}.1.blocks.0", f"{v2_prefix_enc}.stages.{n_pool}.0.convs.{cps - 1}")
    for u in range(n_pool):
        for j in range(cps - 1):
            pairs += _conv_pairs(f"conv_blocks_localization.{u}.0.blocks.{j}", f"{v2_prefix_dec}.stages.{u}.convs.{j}")
        pairs += _conv_pairs(f"conv_blocks_localization.{u}.1.blocks.0", f"{v2_prefix_dec}.stages.{u}.convs.{cps - 1}")
        for p in ("weight", "bias"):  # v1 has no bias here: zeros (below) unless a variant has one
            pairs += [(f"tu.{u}.{p}", f"{v2_prefix_dec}.transpconvs.{u}.{p}"),
                      (f"seg_outputs.{u}.{p}", f"{v2_prefix_dec}.seg_layers.{u}.{p}")]
    return {v2: v1 for v1, v2 in pairs}


def transformer_key_map(layers: int) -> dict:
    """v2 key -> v1 key(s) for the released SelfAtten3DBlock (q, k, v linears concatenated)."""
    m = {}
    for p in ("weight", "bias"):
        m[f"bottleneck.proj_in.{p}"] = f"self_atten.linear_proj.{p}"
        m[f"bottleneck.proj_out.{p}"] = f"self_atten.linear_back_proj.{p}"
        for i in range(layers):
            v1, v2 = f"self_atten.transformer.layers.{i}", f"bottleneck.layers.{i}"
            m[f"{v2}.attn.qkv.{p}"] = [f"{v1}.self_attn.linears.{k}.{p}" for k in range(3)]
            m[f"{v2}.attn.out.{p}"] = f"{v1}.self_attn.linears.3.{p}"
            m[f"{v2}.ff.0.{p}"] = f"{v1}.linear1.{p}"
            m[f"{v2}.ff.3.{p}"] = f"{v1}.linear2.{p}"
            m[f"{v2}.norm1.{p}"] = f"{v1}.layer_norm1.{p}"
            m[f"{v2}.norm2.{p}"] = f"{v1}.layer_norm2.{p}"
    m["bottleneck.legacy_pe"] = "self_atten.pos_encode.pe"
    return m


def is_duplicate_key(key: str) -> bool:
    """v2 state-dict keys that repeat another key's tensor (filled by loading the primary one)."""
    return ".all_modules." in key or key.startswith("decoder.encoder.")


def transformer_options(state: dict, net: Network, checkpoint: Path) -> dict:
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"self_atten\.transformer\.layers\.(\d+)\.", k))})
    try:
        d_model, channels = state["self_atten.linear_proj.weight"].shape
        ff_dim = state["self_atten.transformer.layers.0.linear1.weight"].shape[0]
        pe = state["self_atten.pos_encode.pe"]
    except KeyError as exc:
        raise V1ImportError(checkpoint, f"the transformer lacks tensor {exc.args[0]!r}") from None
    if layers != list(range(len(layers))):
        raise V1ImportError(checkpoint, f"transformer layers {layers} are not numbered 0..n-1")
    if d_model % RELEASED_HEADS:
        raise V1ImportError(checkpoint, f"d_model {d_model} is not divisible by the released {RELEASED_HEADS} heads")
    if tuple(pe.shape) != (1, net.bottleneck_tokens, d_model):
        raise V1ImportError(checkpoint, f"tensor 'self_atten.pos_encode.pe' has shape {tuple(pe.shape)}; the plans' "
                                        f"patch {net.patch_size} and pooling give {net.bottleneck_tokens} bottleneck "
                                        f"tokens, so (1, {net.bottleneck_tokens}, {d_model}) was expected")
    if channels != net.features[-1]:
        raise V1ImportError(checkpoint, f"tensor 'self_atten.linear_proj.weight' takes {channels} channels; the plans' "
                                        f"bottleneck has {net.features[-1]}")
    return {"d_model": int(d_model), "heads": RELEASED_HEADS, "layers": len(layers), "ff_dim": int(ff_dim),
            "dropout": RELEASED_DROPOUT, "positional_encoding": "legacy_1d",
            "positional_length": net.bottleneck_tokens, "layer_norm_eps": RELEASED_LAYER_NORM_EPS}


def convert_state(v1_state: dict, network, key_map: dict, checkpoint: Path) -> dict:
    """The v2 network's full state dict (duplicates included) filled from the v1 tensors."""
    import torch

    target = network.state_dict()
    primary = [k for k in target if not is_duplicate_key(k)]
    used: dict[str, str] = {}
    new = {}
    for key in primary:
        src = key_map.get(key)
        if src is None:
            raise V1ImportError(checkpoint, f"the v2 network's tensor {key!r} has no v1 counterpart (importer bug or "
                                            "unexpected network options)")
        names = src if isinstance(src, list) else [src]
        missing = [n for n in names if n not in v1_state]
        if missing:
            if key.endswith(".bias") and (".transpconvs." in key or ".seg_layers." in key) and len(names) == 1:
                new[key] = torch.zeros_like(target[key])  # v1 has no bias there
                continue
            raise V1ImportError(checkpoint, f"tensor {missing[0]!r} is missing (needed for {key!r}): the checkpoint "
                                            "does not match its plans or trainer, or is incomplete")
        for n in names:
            if n in used:
                raise V1ImportError(checkpoint, f"tensor {n!r} would be used twice ({used[n]!r} and {key!r})")
            used[n] = key
        value = torch.cat([v1_state[n] for n in names], 0) if len(names) > 1 else v1_state[names[0]]
        if value.ndim + 3 == target[key].ndim and key.startswith("bottleneck.proj_"):
            value = value.reshape(*value.shape, 1, 1, 1)  # a Linear over channels is a 1x1x1 convolution
        if tuple(value.shape) != tuple(target[key].shape):
            raise V1ImportError(checkpoint, f"tensor {names[0]!r} has shape {tuple(v1_state[names[0]].shape)}; the "
                                            f"network its plans describe expects {tuple(target[key].shape)} at {key!r}")
        new[key] = value.to(target[key].dtype)
    unused = [k for k in v1_state if k not in used]
    if unused:
        raise V1ImportError(checkpoint, f"tensor {unused[0]!r} has no place in the network its plans and trainer "
                                        f"describe ({len(unused)} unused tensor(s))")
    result = network.load_state_dict(new, strict=False)
    bad = [k for k in result.missing_keys if not is_duplicate_key(k)] + list(result.unexpected_keys)
    if bad:
        raise V1ImportError(checkpoint, f"the converted weights do not load: {bad[0]!r}")
    return network.state_dict()  # duplicate keys share storage: torch.save writes each tensor once


def build_network(plans_json: dict, dataset: dict, trainer_path: str):
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from workflow_scripts.trainers import load_trainer_class

    pm = PlansManager(plans_json)
    conf = pm.get_configuration("3d_fullres")
    n_in = determine_num_input_channels(pm, conf, dataset)
    n_out = pm.get_label_manager(dataset).num_segmentation_heads
    cls = load_trainer_class(trainer_path)
    return cls.build_network_architecture(pm, conf, n_in, n_out, enable_deep_supervision=False)


# ---- the import -----------------------------------------------------------------------------
def import_v1(model_dir, out, modality: str, model: str, plans_file=None, mirroring: bool = True,
              step_size: float = 0.5) -> Path:
    """Write the bundle `out` from the v1 trained model folder `model_dir`; return its path."""
    import torch

    from workflow_scripts.deployment import bundle as B

    model_dir, out = Path(model_dir), Path(out)
    plans_file = Path(plans_file) if plans_file else None
    name = B.check_bundle_name(out)
    folds = find_folds(model_dir)
    infos = {k: model_info(ck) for k, ck in folds}
    trainer, trainer_source = trainer_name(model_dir, infos)
    if trainer not in V1_TRAINERS:
        raise V1ImportError(trainer_source, f"trainer {trainer!r} is not one this import knows "
                                            f"({', '.join(sorted(V1_TRAINERS))}): its network cannot be rebuilt")
    kind = V1_TRAINERS[trainer]
    plans, plans_source = resolve_plans(model_dir, infos, plans_file)
    stage = _stage(plans, infos, plans_source)
    net = Network(plans, stage, plans_source)
    v1 = v1_inference_params(plans, stage, net, plans_source)
    states = {k: load_v1_checkpoint(ck) for k, ck in folds}
    for k, ck in folds:
        has_atten = any(key.startswith("self_atten.") for key in states[k])
        if has_atten != (kind == "pansegnet"):
            raise V1ImportError(ck, f"trainer {trainer} builds {'PanSegNet' if kind == 'pansegnet' else 'a plain U-Net'}"
                                    f" but the checkpoint {'has' if has_atten else 'has no'} self_atten.* tensors")
    first_ck = folds[0][1]
    options = transformer_options(states[folds[0][0]], net, first_ck) if kind == "pansegnet" else None
    plans_json = v2_plans(plans, stage, net, v1, options, name)
    dataset = dataset_json(plans, net)
    trainer_path = V2_TRAINERS[kind]
    key_map = unet_key_map(net.n_pool, net.cps)
    if options:
        key_map.update(transformer_key_map(options["layers"]))
    pp, pp_path = find_postprocessing(model_dir, [k for k, _ in folds])
    if pp_path:
        log.info("postprocessing from %s: largest connected component of %s", pp_path, pp["for_which_classes"])
    validation = {}
    for k, _ in folds:
        found = validation_cases(model_dir / f"fold_{k}")
        if found:
            validation[str(k)] = {"cases": found[0], "source": found[1]}
    work = Path(tempfile.mkdtemp(prefix=".import-v1-", dir=out.parent if out.parent.exists() else None))
    try:
        files: dict[str, Path | bytes] = {
            "plans.json": (json.dumps(plans_json, indent=1) + "\n").encode(),
            "dataset.json": (json.dumps(dataset, indent=1) + "\n").encode(),
            "dataset_fingerprint.json": (json.dumps(fingerprint_json(plans, v1), indent=1) + "\n").encode(),
        }
        for k, ck in folds:
            network = build_network(plans_json, dataset, trainer_path)
            weights = convert_state(states[k], network, key_map, ck)
            path = work / f"fold_{k}" / "checkpoint_final.pth"
            path.parent.mkdir(parents=True)
            torch.save({"network_weights": weights, "trainer_name": trainer_path.partition(":")[2],
                        "inference_allowed_mirroring_axes": (0, 1, 2),
                        "imported_from": f"nnU-Net v1 {trainer}, fold {k}"}, path)
            files[f"fold_{k}/checkpoint_final.pth"] = path
        info = {
            "format": B.FORMAT, "format_version": 2, "name": name, "modality": modality, "model": model,
            "trainer": trainer_path, "configuration": "3d_fullres", "folds": [k for k, _ in folds],
            "checkpoints": [f"fold_{k}/checkpoint_final.pth" for k, _ in folds],
            "inference": {"mirroring": bool(mirroring), "step_size": float(step_size)},
            "inference_semantics": "v1",
            "labels": dataset["labels"], "channels": dataset["channel_names"], "reader": "SimpleITK (as nnU-Net v1)",
            "plan": {"spacing_mm_zyx": net.spacing, "patch_size": net.patch_size, "features_per_stage": net.features},
            "network": options or {}, "training": [], "postprocessing": pp,
            "v1_validation_cases": validation,
            "source": {"kind": "nnU-Net v1 trained model", "model_dir": str(model_dir.resolve()), "trainer": trainer,
                       "plans_from": plans_source, "postprocessing_from": pp_path,
                       "checkpoints_sha256": {str(k): B.sha256_file(ck) for k, ck in folds}},
            "versions": B.software_versions(),
        }
        files[B.INFO] = B.info_bytes(info)
        with B.atomic_path(out) as tmp:
            B.write_archive(tmp, name, files)
            verify(tmp, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: %s (%s) from %s, %d fold(s), %.1f MB", out, model, trainer, model_dir, len(folds),
             out.stat().st_size / 1e6)
    return out


def verify(archive: Path, work: Path) -> None:
    """Read the written bundle back as every reader does and load each fold into its network."""
    from workflow_scripts.deployment import bundle as B
    from workflow_scripts.nnunet.predict import load_checkpoint

    b = B.extract(archive, work / "verify")
    plans_json = json.loads((b.root / "plans.json").read_text())
    dataset = json.loads((b.root / "dataset.json").read_text())
    for ck in b.checkpoints:
        network = build_network(plans_json, dataset, b.info["trainer"])
        network.load_state_dict(load_checkpoint(ck)["network_weights"])  # strict: every tensor, every shape


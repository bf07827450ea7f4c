"""nnU-Net v1's own prediction of some scans, run in a fresh process (v1's predictor forks workers):

    python tests/v1_reference.py MODEL_DIR OUT_DIR IMAGE [IMAGE ...]

writes OUT_DIR/<k>.nii.gz with ``nnunet.inference.predict.predict_cases`` (fold 0, no test-time
mirroring, float32) and OUT_DIR/<k>.npz with v1's probabilities: ``network`` (the sliding window's
softmax in the network's grid, ``trainer.predict_preprocessed_data_return_seg_and_softmax``) and
``export`` (those probabilities resampled to the cropped scan's grid as
``save_segmentation_nifti_from_softmax`` does before its argmax). A folder of trainer
``nnTransUNetTrainerV2`` is run with the naive PanSegNet v1 of tests/v1_models.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import v1_models as V  # noqa: E402


def register_pansegnet_trainer():
    """v1 finds trainers by name inside its package; the PanSegNet trainer is not there: add it."""
    from nnunet.training import model_restore
    from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
    from nnunet.utilities.nd_softmax import softmax_helper

    class nnTransUNetTrainerV2(nnUNetTrainerV2):  # noqa: N801 (v1's name)
        def initialize_network(self):
            self.network = V.naive_pansegnet(self.plans)
            self.network.inference_apply_nonlin = softmax_helper

    find = model_restore.recursive_find_python_class

    def lookup(folder, trainer_name, current_module):
        return nnTransUNetTrainerV2 if trainer_name == "nnTransUNetTrainerV2" else find(folder, trainer_name, current_module)

    model_restore.recursive_find_python_class = lookup


def export_probabilities(softmax, props):
    from nnunet.preprocessing.preprocessing import get_do_separate_z, get_lowres_axis, resample_data_or_seg

    target = props["size_after_cropping"]
    if tuple(softmax.shape[1:]) == tuple(target):
        return softmax
    if get_do_separate_z(props["original_spacing"]):
        separate, axis = True, get_lowres_axis(props["original_spacing"])
    elif get_do_separate_z(props["spacing_after_resampling"]):
        separate, axis = True, get_lowres_axis(props["spacing_after_resampling"])
    else:
        separate, axis = False, None
    if axis is not None and len(axis) != 1:
        separate = False
    return resample_data_or_seg(softmax, target, False, axis, 1, separate, order_z=0)


def main(model_dir: str, out_dir: str, images: list[str]) -> None:
    from nnunet.inference.predict import predict_cases
    from nnunet.training.model_restore import load_model_and_checkpoint_files

    register_pansegnet_trainer()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.serialization.safe_globals(V.V1_SAFE):  # v1 checkpoints hold numpy scalars
        predict_cases(model_dir, [[i] for i in images], [str(out / f"{k}.nii.gz") for k in range(len(images))], (0,),
                      False, 1, 1, do_tta=False, mixed_precision=False, overwrite_existing=True,
                      checkpoint_name="model_final_checkpoint")
        trainer, params = load_model_and_checkpoint_files(model_dir, (0,), mixed_precision=False,
                                                          checkpoint_name="model_final_checkpoint")
    trainer.load_checkpoint_ram(params[0], False)
    for k, image in enumerate(images):
        data, _, props = trainer.preprocess_patient([image])
        softmax = trainer.predict_preprocessed_data_return_seg_and_softmax(
            data, do_mirroring=False, mirror_axes=trainer.data_aug_params["mirror_axes"], use_sliding_window=True,
            step_size=0.5, use_gaussian=True, mixed_precision=False)[1]
        back = softmax.transpose([0] + [i + 1 for i in trainer.plans["transpose_backward"]])
        np.savez(out / f"{k}.npz", network=softmax.astype(np.float32),
                 export=export_probabilities(back, props).astype(np.float32))


if __name__ == "__main__":  # v1 starts worker processes
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

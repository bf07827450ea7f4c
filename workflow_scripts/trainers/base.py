"""Common base of the study's trainers: budget from config, our splits, optional test-time mirroring."""

from __future__ import annotations

import json
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class PanSegTrainer(nnUNetTrainer):
    """nnU-Net's trainer with the knobs the workflow sets from config.

    The constructor signature is nnU-Net's own (plans, configuration, fold, dataset_json, device),
    so nnU-Net's checkpoints and tools keep working; ``configure_run`` is called before
    ``initialize`` with the training budget and the path of the participant-grouped splits.
    """

    splits_file: str | None = None
    test_time_mirroring: bool = True
    optimizer_name: str = "sgd"

    def configure_run(self, epochs: int, iterations_per_epoch: int, val_iterations_per_epoch: int,
                      initial_lr: float, save_every: int, splits_file: str | None = None,
                      test_time_mirroring: bool = True, seed: int | None = None, optimizer: str = "sgd") -> None:
        if self.was_initialized:
            raise RuntimeError("configure_run must come before initialize()")
        self.num_epochs = int(epochs)
        self.num_iterations_per_epoch = int(iterations_per_epoch)
        self.num_val_iterations_per_epoch = int(val_iterations_per_epoch)
        self.initial_lr = float(initial_lr)
        self.save_every = max(1, int(save_every))
        self.splits_file = splits_file
        self.test_time_mirroring = bool(test_time_mirroring)
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        self.optimizer_name = optimizer
        if seed is not None:
            torch.manual_seed(seed)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        """nnU-Net's network, with per-stage decoder kernels where the plans name them (v1 imports)."""
        from ..models.decoder_kernels import apply_plans_decoder_kernels

        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
        return apply_plans_decoder_kernels(network, configuration_manager)

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written under a temporary name and then renamed.

        A job killed while saving (preempted, out of time) keeps its previous checkpoint intact
        instead of leaving a truncated ``checkpoint_latest.pth`` that no re-run could resume from.
        """
        partial = f"{filename}.partial"
        super().save_checkpoint(partial)
        if os.path.exists(partial):  # nothing is written when checkpointing is disabled
            os.replace(partial, filename)

    def do_split(self):
        if self.splits_file is None or self.fold == "all":
            return super().do_split()
        splits = json.loads(open(self.splits_file).read())
        if not 0 <= self.fold < len(splits):
            raise ValueError(f"{self.splits_file}: has {len(splits)} folds, fold {self.fold} requested")
        tr, val = splits[self.fold]["train"], splits[self.fold]["val"]
        self.print_to_log_file(f"fold {self.fold} from {self.splits_file}: {len(tr)} training, {len(val)} validation")
        return tr, val

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.test_time_mirroring:
            # Training still mirrors (augmentation); prediction skips the 2^k mirrored passes.
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch, mirror_axes

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":  # nnU-Net's recipe: SGD Nesterov, momentum 0.99, poly decay
            return super().configure_optimizers()
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

"""AX-Unet trainer: 2-D, depthwise-separable U-Net with ASPP and a boundary-aware loss."""

from __future__ import annotations

import numpy as np
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.network_initialization import InitWeights_He

from ..models.axunet import AXUNet, BoundaryAwareLoss
from .base import PanSegTrainer


class AXUNetTrainer(PanSegTrainer):
    """Run with nnU-Net's '2d' configuration; network size follows that plan."""

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        arch = configuration_manager.network_arch_init_kwargs
        if len(configuration_manager.patch_size) != 2:
            raise ValueError("AX-Unet is a 2-D network: train it with the '2d' configuration")
        options = plans_manager.plans.get("panseg_network", {})
        net = AXUNet(num_input_channels, num_output_channels, arch["features_per_stage"], arch["strides"],
                     arch["kernel_sizes"], enable_deep_supervision, tuple(options.get("aspp_rates", (2, 4, 6))))
        net.apply(InitWeights_He(1e-2))
        return net

    def _build_loss(self):
        loss = BoundaryAwareLoss()
        if self.enable_deep_supervision:
            scales = self._get_deep_supervision_scales()
            weights = np.array([1 / (2**i) for i in range(len(scales))])
            weights[-1] = 0  # as nnU-Net: the lowest resolution output is not trained
            loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        return loss

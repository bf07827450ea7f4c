"""LinTransUNet trainer: nnU-Net's recipe (SGD, poly lr, Dice + CE with deep supervision) and plan.

The authors trained it with nnUNetTrainerV2 for 1000 epochs; here every model of a study trains with
the configured budget (a fair comparison). Network options from ``plans["panseg_network"]``.
"""

from __future__ import annotations

from nnunetv2.utilities.network_initialization import InitWeights_He

from ..models.lintransunet import LinTransUNet
from .base import PanSegTrainer


class LinTransUNetTrainer(PanSegTrainer):
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        arch = configuration_manager.network_arch_init_kwargs
        net = LinTransUNet(num_input_channels, num_output_channels, arch["features_per_stage"], arch["kernel_sizes"],
                           arch["strides"], enable_deep_supervision, **plans_manager.plans.get("panseg_network", {}))
        net.apply(InitWeights_He(1e-2))  # as the authors' trainer (and nnU-Net's own networks)
        return net

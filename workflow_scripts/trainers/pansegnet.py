"""PanSegNet: nnU-Net 3d_fullres with an Efficient-Attention transformer on the bottleneck."""

from __future__ import annotations

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from ..models.pansegnet import PanSegNet
from .base import PanSegTrainer


class PanSegNetTrainer(PanSegTrainer):
    """nnU-Net's recipe and U-Net; the transformer's size comes from ``plans["panseg_network"]``
    (written by the workflow from config: paper size by default, a small one in the demo)."""

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        unet = get_network_from_plans(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels,
            num_output_channels,
            allow_init=True,
            deep_supervision=enable_deep_supervision,
        )
        return PanSegNet(unet, **plans_manager.plans.get("panseg_network", {}))

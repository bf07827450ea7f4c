"""TransUNet-3D stand-in: PanSegNet's network and recipe with softmax attention in the bottleneck."""

from __future__ import annotations

from ..models.transunet3d import DEFAULT_MAX_TOKENS, TooManyTokens, TransUNet3D, bottleneck_tokens, token_limit_message
from .base import PanSegTrainer


class TransUNet3DTrainer(PanSegTrainer):
    """nnU-Net's recipe and U-Net; the transformer's size (and ``max_tokens``) from ``plans["panseg_network"]``,
    as PanSegNet's. A plan whose bottleneck exceeds ``max_tokens`` is refused here, when the network is
    built: before training starts."""

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        options = dict(plans_manager.plans.get("panseg_network", {}))
        max_tokens = int(options.pop("max_tokens", DEFAULT_MAX_TOKENS))
        arch = configuration_manager.network_arch_init_kwargs
        tokens = bottleneck_tokens(configuration_manager.patch_size, arch["strides"])
        if tokens > max_tokens:
            raise TooManyTokens(token_limit_message(tokens, max_tokens,
                                                    f"patch {list(configuration_manager.patch_size)}"))
        unet = PanSegTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
        return TransUNet3D(unet, max_tokens=max_tokens, **options)

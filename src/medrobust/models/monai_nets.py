"""MONAI's 2D ResNet-18 and DenseNet-121, sized for small medical images."""

from __future__ import annotations

from monai.networks.nets import DenseNet121, ResNet
from monai.networks.nets.resnet import ResNetBlock
from torch import nn


def resnet18(in_channels: int = 3, num_classes: int = 2, small_input: bool = True) -> nn.Module:
    """MONAI ResNet-18 (2D). ``small_input`` swaps the 7x7/2 stem and max-pool for a 3x3/1 stem.

    That is the usual CIFAR/MedMNIST-28 adaptation: a 7x7 stride-2 stem plus max-pool would shrink
    a 28x28 image to 7x7 before the first residual stage.
    """
    return ResNet(
        block=ResNetBlock,
        layers=[2, 2, 2, 2],
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_classes,
        conv1_t_size=3 if small_input else 7,
        conv1_t_stride=1 if small_input else 2,
        no_max_pool=small_input,
    )


def densenet121(in_channels: int = 3, num_classes: int = 2) -> nn.Module:
    """MONAI DenseNet-121 (2D), any channel count and class count."""
    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)

"""Video backbones and MLP heads.

Every backbone takes float clips (B, 3, T, H, W) and provides:
  - `forward_features(x) -> (B, C, t, h, w)`: the map of the last convolutional block (Grad-CAM);
  - `forward(x) -> (B, feature_dim)`: that map averaged over (t, h, w) (global average pooling);
  - `feature_dim`: C;  `last_block`: the module whose output `forward_features` returns.

    backbone = build_backbone("small3d", widths=(24, 32, 64, 128))
    projector = mlp_head(backbone.feature_dim, (512, 512, 512))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from vididi.utils import VididiError


class Backbone(nn.Module):
    """Base class: subclasses set `feature_dim` and define `last_block` (a property, so the module is
    not registered twice in the state dict) and `forward_features`."""

    feature_dim: int

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).mean(dim=(2, 3, 4))


def _check_input(x: Tensor) -> None:
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"backbones take clips shaped (B, 3, T, H, W), got shape {tuple(x.shape)}")


class TorchvisionVideoResNet(Backbone):
    """torchvision's r3d_18 / r2plus1d_18 / mc3_18 (weights=None) without avgpool and fc.

    The children keep torchvision's names (stem, layer1..layer4), so state dicts match torchvision's
    apart from the dropped `fc`. Global average pooling replaces torchvision's adaptive avgpool, so
    112x112 and smaller frames work (16x112x112 gives a 2x7x7 map; mc3_18 keeps all 16 time steps).
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        from torchvision.models import video  # lazy: importing torchvision costs seconds

        model = getattr(video, arch)(weights=None)
        self.stem = model.stem
        self.layer1 = model.layer1
        self.layer2 = model.layer2
        self.layer3 = model.layer3
        self.layer4 = model.layer4
        self.feature_dim = int(model.fc.in_features)

    @property
    def last_block(self) -> nn.Module:
        return self.layer4

    def forward_features(self, x: Tensor) -> Tensor:
        _check_input(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


class TorchvisionS3D(Backbone):
    """torchvision's S3D (weights=None) without its classifier.

    torchvision's S3D ends in a fixed AvgPool3d((2, 7, 7)) made for 16x224x224 inputs; it is dropped
    and the global average in `forward` plays its role for any input size (16x112x112 gives a 2x3x3 map).
    Note: its BatchNorms use momentum 0.001 (ported from TensorFlow's decay 0.999).
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import video  # lazy: importing torchvision costs seconds

        model = video.s3d(weights=None)
        self.features = model.features
        self.feature_dim = int(model.classifier[1].in_channels)

    @property
    def last_block(self) -> nn.Module:
        return self.features[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        _check_input(x)
        return self.features(x)


class Conv2Plus1d(nn.Sequential):
    """A (1,3,3) spatial conv, BN, ReLU, then a (3,1,1) temporal conv (the R(2+1)D factorisation).

    On CPUs PyTorch's 3x3x3 Conv3d is several times slower than this pair (measured 4.1 s vs 0.64 s
    forward+backward for 32 clips of 16x16x28x28 on 2 cores), and the pair adds a non-linearity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, (1, 3, 3), stride=(1, stride[1], stride[2]), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, (3, 1, 1), stride=(stride[0], 1, 1), padding=(1, 0, 0), bias=False),
        )


class Block2Plus1d(nn.Module):
    """relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)) with (2+1)D convs; shortcut = 1x1x1 conv + BN
    when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = Conv2Plus1d(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = Conv2Plus1d(out_channels, out_channels, (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if in_channels != out_channels or stride != (1, 1, 1):
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class Small3d(Backbone):
    """A small (2+1)D ResNet for CPU runs on the synthetic dataset (48x48 to 64x64 frames).

    stem: Conv3d(3, widths[0], (1,5,5), stride (1,2,2), padding (0,2,2)) + BN + ReLU (no max-pool: the
    objects are small); then one Block2Plus1d per further width, with strides (1,2,2) for the first and
    (2,2,2) after it. widths (24, 32, 64, 128): 8x56x56 clips give a (128, 2, 4, 4) map, ~0.44M
    parameters. Kaiming-normal (fan_out) conv init.
    """

    def __init__(self, widths: Sequence[int] = (24, 32, 64, 128)) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2 or not all(isinstance(w, int) and w > 0 for w in widths):
            raise VididiError(f"small3d widths must list at least 2 positive integers (stem, stages...), got {list(widths)}")
        self.stem = nn.Sequential(
            nn.Conv3d(3, widths[0], (1, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks = []
        for i, (in_channels, width) in enumerate(zip(widths[:-1], widths[1:])):
            blocks.append(Block2Plus1d(in_channels, width, (1, 2, 2) if i == 0 else (2, 2, 2)))
        self.stages = nn.Sequential(*blocks)
        self.feature_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def last_block(self) -> nn.Module:
        return self.stages[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        _check_input(x)
        return self.stages(self.stem(x))


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "small3d": Small3d,
    "r3d_18": lambda: TorchvisionVideoResNet("r3d_18"),
    "r2plus1d_18": lambda: TorchvisionVideoResNet("r2plus1d_18"),
    "mc3_18": lambda: TorchvisionVideoResNet("mc3_18"),
    "s3d": TorchvisionS3D,
}


def build_backbone(name: str, **options) -> Backbone:
    """A fresh, randomly initialised backbone from `BACKBONES` (options: small3d's `widths`)."""
    if name not in BACKBONES:
        raise VididiError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    builder = BACKBONES[name]
    allowed = set(inspect.signature(builder).parameters)
    unknown = sorted(set(options) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise VididiError(f"backbone {name!r} got unknown option(s) {', '.join(unknown)}; accepted: {accepted}")
    if "widths" in options:
        options["widths"] = tuple(options["widths"])
    return builder(**options)


def mlp_head(in_dim: int, widths: Sequence[int], last_bn: bool = False) -> nn.Sequential:
    """MLP: [Linear -> BatchNorm1d -> ReLU] for every width but the last, then a plain Linear.

    `last_bn=True` appends a BatchNorm1d after the last Linear. widths=(512, 512, 512) is the
    3-layer projector of docs/method.md.
    """
    widths = tuple(widths)
    if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        raise VididiError(f"MLP head widths must be a non-empty list of positive integers, got {list(widths)}")
    layers: list[nn.Module] = []
    dim = in_dim
    for width in widths[:-1]:
        # the bias is redundant in front of BatchNorm (its mean subtraction cancels it)
        layers += [nn.Linear(dim, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        dim = width
    layers.append(nn.Linear(dim, widths[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(widths[-1]))
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "BACKBONES",
    "Backbone",
    "Block2Plus1d",
    "Conv2Plus1d",
    "Small3d",
    "TorchvisionS3D",
    "TorchvisionVideoResNet",
    "build_backbone",
    "count_parameters",
    "mlp_head",
]

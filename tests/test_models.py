import math

import pytest
import torch
from torch import nn

from vididi.ssl.models import BACKBONES, Block2Plus1d, build_backbone, count_parameters, mlp_head
from vididi.utils import VididiError

torch.set_num_threads(1)


def hooked_forward(backbone, x):
    """(pooled output, forward_features output, output captured at backbone.last_block)."""
    captured = {}
    handle = backbone.last_block.register_forward_hook(lambda m, i, o: captured.setdefault("map", o))
    try:
        pooled = backbone(x)
        fmap = backbone.forward_features(x)
    finally:
        handle.remove()
    return pooled, fmap, captured["map"]


@pytest.mark.parametrize(
    "name, feature_dim, clip, map_shape",
    [
        ("small3d", 128, (8, 32, 32), (2, 128, 2, 2, 2)),
        ("r3d_18", 512, (8, 32, 32), (2, 512, 1, 2, 2)),
        ("r2plus1d_18", 512, (8, 32, 32), (2, 512, 1, 2, 2)),
        ("mc3_18", 512, (8, 32, 32), (2, 512, 8, 2, 2)),  # 2D convs after layer1: no temporal stride
        ("s3d", 1024, (8, 32, 32), (2, 1024, 1, 1, 1)),
    ],
)
def test_backbone_contract(name, feature_dim, clip, map_shape):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    assert backbone.feature_dim == feature_dim
    x = torch.randn(2, 3, *clip)
    with torch.no_grad():
        pooled, fmap, at_last_block = hooked_forward(backbone, x)
    assert fmap.shape == map_shape
    assert pooled.shape == (2, feature_dim)
    # forward = global average pooling of forward_features, and last_block produces that map
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(fmap, at_last_block)
    assert not any(isinstance(m, nn.Linear) for m in backbone.modules())  # classifier removed


def test_s3d_accepts_112x112_clips():
    # torchvision's fixed AvgPool3d((2, 7, 7)) would fail on the 1x3x3 map of an 8x112x112 clip
    backbone = build_backbone("s3d").eval()
    with torch.no_grad():
        fmap = backbone.forward_features(torch.randn(1, 3, 8, 112, 112))
        pooled = backbone(torch.randn(1, 3, 8, 112, 112))
    assert fmap.shape == (1, 1024, 1, 3, 3)
    assert pooled.shape == (1, 1024)


def test_small3d_map_shape_for_the_synthetic_clip_size():
    backbone = build_backbone("small3d").eval()
    with torch.no_grad():
        fmap = backbone.forward_features(torch.randn(1, 3, 8, 56, 56))
    # stem halves h, w (56 -> 28); stage 1 halves h, w (14); stages 2-3 halve t, h, w: 8x14x14 -> 2x4x4
    assert fmap.shape == (1, 128, 2, 4, 4)


def test_small3d_parameter_count_by_hand():
    backbone = build_backbone("small3d", widths=[4, 4, 8])
    stem = 3 * 4 * 1 * 5 * 5 + 2 * 4  # (1,5,5) conv + BN affine

    def conv21(cin, cout):  # (1,3,3) conv + BN + (3,1,1) conv
        return cin * cout * 9 + 2 * cout + cout * cout * 3

    block1 = conv21(4, 4) + 2 * 4 + conv21(4, 4) + 2 * 4 + (4 * 4 + 2 * 4)  # stride (1,2,2): projection
    block2 = conv21(4, 8) + 2 * 8 + conv21(8, 8) + 2 * 8 + (4 * 8 + 2 * 8)
    assert count_parameters(backbone) == stem + block1 + block2 == 2108
    assert backbone.feature_dim == 8
    assert isinstance(backbone.stages[0].shortcut, nn.Sequential)
    assert backbone.stages[0].conv1[0].stride == (1, 2, 2) and backbone.stages[0].conv1[3].stride == (1, 1, 1)
    assert backbone.stages[1].conv1[0].stride == (1, 2, 2) and backbone.stages[1].conv1[3].stride == (2, 1, 1)
    assert backbone.stem[0].kernel_size == (1, 5, 5) and backbone.stem[0].stride == (1, 2, 2)
    assert not any(isinstance(m, nn.MaxPool3d) for m in backbone.modules())


def test_small3d_kaiming_init():
    torch.manual_seed(0)
    conv = build_backbone("small3d").stages[2].conv2[0]  # (1,3,3) conv, 128 -> 128
    fan_out = 128 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)


def test_block_is_residual():
    torch.manual_seed(0)
    block = Block2Plus1d(4, 4, (1, 1, 1)).eval()
    nn.init.zeros_(block.bn2.weight)  # residual branch off: the block is relu(identity)
    nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 4, 3, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_small3d_trains_end_to_end():
    torch.manual_seed(0)
    backbone = build_backbone("small3d", widths=(4, 8, 8, 16))
    x = torch.randn(4, 3, 8, 16, 16)
    backbone(x).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters())


def test_mlp_head_structure_and_values():
    head = mlp_head(16, (512, 512, 512))
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp_head(16, (32, 8), last_bn=True)[-1].num_features == 8
    # eval mode with fresh statistics: relu(W1 x / sqrt(1 + eps)) then W2 . + b2
    torch.manual_seed(0)
    small = mlp_head(5, (6, 3)).eval()
    x = torch.randn(4, 5)
    w1, w2, b2 = small[0].weight, small[3].weight, small[3].bias
    hidden = torch.clamp(x @ w1.T / math.sqrt(1 + 1e-5), min=0)
    torch.testing.assert_close(small(x), hidden @ w2.T + b2)


def test_registry_and_errors():
    assert set(BACKBONES) == {"small3d", "r3d_18", "r2plus1d_18", "mc3_18", "s3d"}
    with pytest.raises(VididiError, match="unknown backbone 'resnet50'"):
        build_backbone("resnet50")
    with pytest.raises(VididiError, match="unknown option.*depth.*accepted: widths"):
        build_backbone("small3d", depth=3)
    with pytest.raises(VididiError, match="unknown option.*widths"):
        build_backbone("r3d_18", widths=(8,))
    with pytest.raises(VididiError, match="widths"):
        build_backbone("small3d", widths=[4, 0])
    with pytest.raises(VididiError, match="widths"):
        mlp_head(4, [])
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        build_backbone("small3d")(torch.randn(3, 8, 16, 16))

"""The GPU-speed switches of pretraining (0.1.0): `pretrain.compile` and `pretrain.fused_optimizer`.

Their defaults (auto) must leave CPU training exactly as it was: no compilation, the for-each AdamW.
"""

from __future__ import annotations

import pytest
import torch

from vididi.config import resolve
from vididi.ssl.trainer import build_model, compile_model, make_optimizer, on_cuda_when_auto


def tiny_model():
    cfg = resolve({})
    settings = {
        "backbone": {"name": "small3d", **cfg["backbones"].get("small3d", {}), "widths": [4, 8, 8, 16]},
        "framework": {"name": "vicreg", **cfg["frameworks"]["vicreg"], "projector": [32, 32, 32]},
        "seed": 0,
    }
    return build_model(settings, num_classes=4)


def test_switches_resolve_on_for_cuda_only_when_auto():
    assert on_cuda_when_auto("auto", "cuda") and on_cuda_when_auto("auto", torch.device("cuda", 1))
    assert not on_cuda_when_auto("auto", "cpu")
    assert on_cuda_when_auto(True, "cpu") and not on_cuda_when_auto(False, "cuda")
    cfg = resolve({})["pretrain"]
    assert cfg["compile"] == "auto" and cfg["fused_optimizer"] == "auto"


def test_defaults_on_cpu_compile_nothing_and_keep_the_foreach_adamw():
    model = tiny_model()
    forward = model.encoder.forward
    assert compile_model(model, torch.device("cpu"), "auto") == []
    assert model.encoder.forward == forward and model.encoder._compiled_call_impl is None
    optimizer = make_optimizer(model, resolve({})["pretrain"], torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults["fused"]


def test_compiling_keeps_parameter_names_and_checkpoints_unchanged():
    model = tiny_model()
    keys = list(model.state_dict())
    assert compile_model(model, torch.device("cpu"), True) == ["encoder", "projector"]
    assert model.encoder._compiled_call_impl is not None  # nn.Module.compile: in place, lazily
    assert list(model.state_dict()) == keys  # no `_orig_mod.` prefix: resume and final.pt are unaffected


def test_fused_optimizer_switch():
    model = tiny_model()
    pre = {**resolve({})["pretrain"], "fused_optimizer": True}
    fused = make_optimizer(model, pre, torch.device("cpu"))  # the CPU has a fused AdamW kernel too
    assert fused.defaults["fused"]
    plain = make_optimizer(model, {**pre, "fused_optimizer": False}, torch.device("cpu"))
    assert fused.state_dict()["param_groups"][0]["params"] == plain.state_dict()["param_groups"][0]["params"]


@pytest.mark.slow
def test_compiled_model_computes_the_eager_loss_and_gradients():
    """One forward + backward of the compiled encoder + projector against eager on the same input.
    Inductor fuses and reorders float32 arithmetic, so agreement is to float32 rounding of a few
    dozen operations, not bitwise (1e-3 relative bounds that on any CPU with a wide margin)."""
    eager, compiled = tiny_model(), tiny_model()
    compile_model(compiled, torch.device("cpu"), True)
    torch.manual_seed(1)
    x1, x2 = torch.randn(4, 3, 4, 28, 28), torch.randn(4, 3, 4, 28, 28)
    losses = []
    for model in (eager, compiled):
        loss, _ = model(x1, x2)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-3, atol=1e-5)
    # Per tensor, relative to its norm (single entries of a conv gradient are sums of thousands of
    # cancelling terms: their own relative error is unbounded), with a floor of 1e-5 of the whole
    # gradient's norm: a bias feeding a BatchNorm has an exactly-zero true gradient, pure rounding.
    total = torch.cat([p.grad.flatten() for p in eager.parameters()]).norm()
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        gap = (b.grad - a.grad).norm()
        assert gap <= 1e-3 * a.grad.norm() + 1e-5 * total, f"{name}: compiled gradient differs by {gap:.3g} (norm {a.grad.norm():.3g})"

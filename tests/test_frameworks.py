"""Frameworks (losses over a tiny small3d) and the distributed helpers they rely on.

The two-process tests spawn a gloo group on CPU and compare against a single process on the full
batch: GlobalBatchNorm alone, then SimCLR / VICReg / BYOL wrapped in DistributedDataParallel.
"""

import copy
import io
import math
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vididi.ssl.distributed import GlobalBatchNorm, convert_sync_batchnorm, gather, is_main, world
from vididi.ssl.frameworks import BYOL, build_framework, framework_options
from vididi.ssl.losses import byol
from vididi.ssl.models import build_backbone
from vididi.utils import VididiError

torch.set_num_threads(1)

TINY_WIDTHS = (4, 8, 8, 16)
SSL_OPTIONS = {
    "simclr": {"projector": [32, 32, 16], "temperature": 0.2},
    "vicreg": {"projector": [32, 32, 16]},
    "byol": {"projector": [32, 32, 16], "predictor": [32, 16]},
}
ALL_OPTIONS = {**SSL_OPTIONS, "supervised": {"num_classes": 3}}


def tiny_framework(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_framework(name, build_backbone("small3d", widths=TINY_WIDTHS), ALL_OPTIONS[name])


def tiny_batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 3, 8, 16, 16, generator=g)
    x2 = x1 + 0.5 * torch.randn(n, 3, 8, 16, 16, generator=g)
    labels = torch.arange(n) % 3
    return x1, x2, labels


# ------------------------------------------------------------------------------- frameworks


@pytest.mark.parametrize("name", ["simclr", "vicreg", "supervised"])  # BYOL: the exact tests below
def test_loss_is_finite_and_decreases_under_sgd(name):
    model = tiny_framework(name)
    x1, x2, labels = tiny_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for step in range(20):
        loss, terms = model(x1, x2, labels)
        assert torch.isfinite(loss)
        assert all(not t.requires_grad and t.ndim == 0 for t in terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step(step, 20)
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_uniform_call_shape_and_terms():
    x1, x2, labels = tiny_batch()
    expected_terms = {
        "simclr": {"nt_xent"},
        "vicreg": {"invariance", "variance", "covariance"},
        "byol": {"byol"},
        "supervised": {"cross_entropy", "accuracy"},
    }
    for name, keys in expected_terms.items():
        model = tiny_framework(name)
        loss, terms = model.loss(x1, x2, labels)  # same call for every framework
        assert set(terms) == keys
        assert model.encoder.feature_dim == TINY_WIDTHS[-1]


def test_supervised_uses_x1_only_and_reports_accuracy():
    model = tiny_framework("supervised").eval()
    x1, x2, labels = tiny_batch()
    loss_a, terms = model(x1, x2, labels)
    loss_b, _ = model.loss_supervised(x1, labels)
    loss_c, _ = model(x1, torch.zeros_like(x2), labels)
    assert loss_a.item() == loss_b.item() == loss_c.item()
    with torch.no_grad():
        logits = model.classifier(model.encoder(x1))
    hits = sum(int(logits[i].argmax()) == int(labels[i]) for i in range(len(labels)))
    assert terms["accuracy"].item() == pytest.approx(hits / len(labels))
    assert loss_a.item() == pytest.approx(nn.CrossEntropyLoss()(logits, labels).item(), rel=1e-6)


def test_byol_target_gets_no_gradient_and_follows_the_ema_formula():
    model = tiny_framework("byol")
    assert isinstance(model, BYOL)
    online = dict(model.encoder.named_parameters()) | {f"p.{k}": v for k, v in model.projector.named_parameters()}
    target = dict(model.target_encoder.named_parameters()) | {
        f"p.{k}": v for k, v in model.target_projector.named_parameters()
    }
    assert online.keys() == target.keys()
    for key in online:  # the target starts as a copy of the online network
        torch.testing.assert_close(target[key], online[key], rtol=0, atol=0)

    x1, x2, _ = tiny_batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss, _ = model(x1, x2)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in target.values())
    optimizer.step()
    before = {k: v.detach().clone() for k, v in target.items()}
    step, total = 3, 10
    model.after_step(step, total)
    tau = 1.0 - (1.0 - 0.99) * (math.cos(math.pi * step / total) + 1) / 2
    assert model.tau == pytest.approx(tau)
    changed = 0
    for key in online:
        expected = tau * before[key] + (1 - tau) * online[key].detach()
        torch.testing.assert_close(target[key], expected, rtol=1e-6, atol=1e-7)
        changed += int(not torch.equal(target[key], before[key]))
    assert changed > 0


def byol_reference_loss(model: BYOL, x1, x2):
    """BYOL's loss written out from the paper (Grill et al. 2020, eq. 2 and its symmetrisation), on
    copies of the model's modules, all in train mode (batch statistics, as BYOL runs its target):
    the online network (encoder, projector, then predictor) of each view predicts the target
    network's (encoder, projector; no predictor) projection of the OTHER view, a constant."""
    online = [copy.deepcopy(m).train() for m in (model.encoder, model.projector, model.predictor)]
    target = [copy.deepcopy(m).train() for m in (model.target_encoder, model.target_projector)]

    def q(x):
        return online[2](online[1](online[0](x)))

    def z_target(x):
        with torch.no_grad():
            return target[1](target[0](x))

    def regression(p, z):  # 2 - 2 cos, averaged over the batch
        return (2 - 2 * nn.functional.cosine_similarity(p, z, dim=1)).mean()

    loss = regression(q(x1), z_target(x2)) + regression(q(x2), z_target(x1))
    return loss, online


def moved_target(seed: int = 0) -> BYOL:
    """A tiny BYOL whose target differs from its online network (as after some EMA steps), so that
    any mix-up of the two networks changes the loss."""
    model = tiny_framework("byol", seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in [*model.target_encoder.parameters(), *model.target_projector.parameters()]:
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))
    return model


def test_byol_loss_is_the_symmetric_prediction_of_the_other_views_target():
    x1, x2, _ = tiny_batch()
    model = moved_target()
    expected, online = byol_reference_loss(model, x1, x2)
    loss, terms = model(x1, x2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["byol"].item() == loss.item()
    # the value tells the right loss from the plausible wrong ones: same-view pairs, the predictor
    # on the target too, no symmetrisation, the online network as its own target
    with torch.no_grad():
        p = [model.predictor(model.projector(model.encoder(x))) for x in (x1, x2)]
        t = [model.target_projector(model.target_encoder(x)) for x in (x1, x2)]
        wrong = {
            "same view": byol(p[0], t[0]) + byol(p[1], t[1]),
            "predictor on target": byol(p[0], model.predictor(t[1])) + byol(p[1], model.predictor(t[0])),
            "one direction": 2 * byol(p[0], t[1]),
            "online as target": byol(p[0], model.projector(model.encoder(x2))) + byol(p[1], model.projector(model.encoder(x1))),
        }
    for name, value in wrong.items():
        assert abs(value.item() - expected.item()) > 1e-3, name
    # swapping the views gives the same loss (the symmetrised form), exactly
    assert model(x2, x1)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_byol_gradient_reaches_the_online_network_only_through_its_own_branch():
    x1, x2, _ = tiny_batch()
    model = moved_target()
    expected, online = byol_reference_loss(model, x1, x2)
    expected.backward()
    loss, _ = model(x1, x2)
    loss.backward()
    # the target is a separate network that gets no gradient (stop-gradient), ...
    target_params = [*model.target_encoder.parameters(), *model.target_projector.parameters()]
    online_params = [*model.encoder.parameters(), *model.projector.parameters(), *model.predictor.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in target_params)
    assert not {p.data_ptr() for p in target_params} & {p.data_ptr() for p in online_params}
    # ... and the online gradient is that of the reference loss with the target's outputs held constant
    reference = [p for module in online for p in module.parameters()]
    assert len(reference) == len(online_params)
    for ours, theirs in zip(online_params, reference):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad.abs().sum() > 0 for p in model.predictor.parameters())  # the predictor learns


def trainer_for(model, lr: float, total: int):
    """The real training step (vididi.ssl.trainer.Trainer) around `model`, on frames only, with SGD."""
    from vididi.ssl.schedule import BalancedSchedule
    from vididi.ssl.trainer import StepInput, Trainer

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    step_input = StepInput(mean=[0.0, 0.0, 0.0], sigma=[1.0, 1.0, 1.0], frames=8, scaling="none")
    return Trainer(model, optimizer, scheduler, BalancedSchedule("frames_only", seed=0), step_input,
                   torch.device("cpu"), "fp32", False, None, total)  # fmt: skip


def uint8_batch(n: int = 8, seed: int = 3):
    """A batch as TrainClips yields it: two uint8 clips of T + 2 frames and identity colour maps."""
    g = torch.Generator().manual_seed(seed)
    clips = [torch.randint(0, 256, (n, 3, 10, 16, 16), generator=g, dtype=torch.uint8) for _ in range(2)]
    identity = torch.cat([255 * torch.eye(3), torch.zeros(3, 1)], dim=1).expand(n, 3, 4)
    return clips[0], clips[1], identity, identity, torch.zeros(n, dtype=torch.long)


def test_byol_ema_follows_the_optimiser_step_with_the_scheduled_tau():
    # Trainer.step: backward, optimiser step, THEN target <- tau_k target + (1 - tau_k) online with
    # the online weights just updated and tau_k = byol_tau(k, total) (here 0.5 rising to 0.9).
    total = 4
    model = build_framework("byol", build_backbone("small3d", widths=TINY_WIDTHS),
                            {**SSL_OPTIONS["byol"], "tau_base": 0.5, "tau_final": 0.9})  # fmt: skip
    trainer = trainer_for(model, lr=0.5, total=total)
    online = [*model.encoder.parameters(), *model.projector.parameters()]
    target = [*model.target_encoder.parameters(), *model.target_projector.parameters()]
    buffers = lambda: [b.clone() for b in model.target_encoder.buffers()]  # noqa: E731
    for step in range(total):
        before_target = [p.detach().double().clone() for p in target]
        before_online = [p.detach().double().clone() for p in online]
        model.train()
        batch = uint8_batch(seed=step)
        trainer.step(step, batch)
        tau = 0.9 - (0.9 - 0.5) * (math.cos(math.pi * step / total) + 1) / 2  # BYOL's cosine rise
        assert model.tau == pytest.approx(tau, rel=1e-12)
        right = [tau * t + (1 - tau) * o.detach().double() for t, o in zip(before_target, online)]
        wrong_order = [tau * t + (1 - tau) * o for t, o in zip(before_target, before_online)]
        for p, expected in zip(target, right):
            torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)
        # the check has power: updating the target before the optimiser step would be far off
        gap = max((w - r).abs().max().item() for w, r in zip(wrong_order, right))
        assert gap > 1e-3, gap

    # the EMA moves parameters only: the target's BatchNorm statistics are its own (train-mode
    # forwards of the target), never averaged in from the online network
    marker = buffers()
    model.after_step(0, total)
    for ours, saved in zip(model.target_encoder.buffers(), marker):
        assert torch.equal(ours, saved)
    target_running = model.target_encoder.stem[1].running_mean.clone()
    online_running = model.encoder.stem[1].running_mean.clone()
    assert not torch.equal(target_running, online_running)  # each network's own statistics


@pytest.mark.parametrize("name", ["simclr", "vicreg", "byol", "supervised"])
def test_state_dict_round_trip_restores_identical_outputs(name):
    x1, x2, labels = tiny_batch()
    trained = tiny_framework(name, seed=0)
    optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):  # move weights, BN statistics and (BYOL) the target away from init
        loss, _ = trained(x1, x2, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trained.after_step(step, 10)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored = tiny_framework(name, seed=123)
    restored.load_state_dict(torch.load(buffer))
    if name == "byol":
        assert any(k.startswith("target_encoder.") for k in trained.state_dict())
        assert any(k.startswith("target_projector.") for k in trained.state_dict())
    trained.eval()
    restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored.encoder(x1), trained.encoder(x1), rtol=0, atol=0)
        assert restored(x1, x2, labels)[0].item() == trained(x1, x2, labels)[0].item()


def test_build_framework_errors_and_options():
    backbone = build_backbone("small3d", widths=TINY_WIDTHS)
    assert framework_options("vicreg") == {
        "projector": (512, 512, 512),
        "sim_weight": 25.0,
        "var_weight": 25.0,
        "cov_weight": 1.0,
    }
    assert framework_options("simclr")["temperature"] == 0.1
    assert framework_options("byol")["tau_base"] == 0.99
    with pytest.raises(VididiError, match="unknown framework 'moco'; choose one of simclr, byol, vicreg, supervised"):
        build_framework("moco", backbone, {})
    with pytest.raises(VididiError, match="unknown option.*temprature.*accepted: projector, temperature"):
        build_framework("simclr", backbone, {"temprature": 0.1})
    with pytest.raises(VididiError, match="num_classes"):
        build_framework("supervised", backbone, {})
    with pytest.raises(VididiError, match="predictor must end at the projector's width 16"):
        build_framework("byol", backbone, {"projector": [32, 16], "predictor": [32, 8]})
    with pytest.raises(VididiError, match="tau"):
        build_framework("byol", backbone, {"tau_base": 1.2})
    with pytest.raises(VididiError, match="temperature"):
        build_framework("simclr", backbone, {"temperature": 0})
    x1, _, _ = tiny_batch(4)
    with pytest.raises(ValueError, match="two views"):
        build_framework("vicreg", backbone, {"projector": [8, 8]})(x1)
    with pytest.raises(ValueError, match="labels"):
        build_framework("supervised", backbone, {"num_classes": 3})(x1)


# ------------------------------------------------------------------------ distributed, 1 process


def test_helpers_without_a_process_group():
    assert world() == (0, 1)
    assert is_main()
    x = torch.randn(3, 2)
    assert gather(x) is x
    module = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4))
    assert convert_sync_batchnorm(module) is module
    assert isinstance(module[1], nn.BatchNorm3d)


@pytest.mark.parametrize(
    "make_bn, shape",
    [
        (lambda: nn.BatchNorm3d(4), (6, 4, 3, 2, 2)),
        (lambda: nn.BatchNorm1d(4), (7, 4)),
        (lambda: nn.BatchNorm3d(4, momentum=None), (6, 4, 3, 2, 2)),
        (lambda: nn.BatchNorm1d(4, affine=False), (7, 4)),
    ],
)
def test_global_batchnorm_equals_batchnorm_without_a_group(make_bn, shape):
    torch.manual_seed(0)
    reference = make_bn()
    if reference.affine:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 2.0)
            reference.bias.uniform_(-1.0, 1.0)
    ours = GlobalBatchNorm.from_batchnorm(reference)
    reference_copy = copy.deepcopy(reference)
    for _ in range(3):  # train mode: batch statistics and running-stat updates
        x = torch.randn(*shape) * 3 + 5
        upstream = torch.randn(*shape)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = reference_copy(xa), ours(xb)
        (ya * upstream).sum().backward()
        (yb * upstream).sum().backward()
        torch.testing.assert_close(yb, ya, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xb.grad, xa.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, reference_copy.running_mean)
    torch.testing.assert_close(ours.running_var, reference_copy.running_var)
    assert int(ours.num_batches_tracked) == int(reference_copy.num_batches_tracked) == 3
    if reference.affine:
        torch.testing.assert_close(ours.weight.grad, reference_copy.weight.grad, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ours.bias.grad, reference_copy.bias.grad, atol=1e-4, rtol=1e-5)
    ours.eval()
    reference_copy.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(ours(x), reference_copy(x), atol=1e-5, rtol=1e-5)


def test_global_batchnorm_copies_the_original_state():
    bn = nn.BatchNorm3d(3).eval()
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
    bn.num_batches_tracked.fill_(7)
    ours = GlobalBatchNorm.from_batchnorm(bn)
    assert not ours.training
    assert ours.running_mean.tolist() == [2.0] * 3 and ours.running_var.tolist() == [4.0] * 3
    assert ours.weight.tolist() == [3.0] * 3 and int(ours.num_batches_tracked) == 7
    assert set(ours.state_dict()) == set(bn.state_dict())


# ------------------------------------------------------------------------ distributed, 2 processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_rank_worker(rank: int, world_size: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        data = torch.load(f"{folder}/inputs.pt")
        out = {"world": world(), "is_main": is_main()}
        half = data["bn_x"].shape[0] // world_size
        rows = slice(rank * half, (rank + 1) * half)

        # GlobalBatchNorm on half the batch each
        original = nn.BatchNorm3d(3)
        original.load_state_dict(data["bn"])
        bn = convert_sync_batchnorm(nn.Sequential(original))[0]
        out["bn_type"] = type(bn).__name__
        x = data["bn_x"][rows].clone().requires_grad_()
        y = bn(x)
        (y * data["bn_upstream"][rows]).sum().backward()
        out["bn_y"], out["bn_grad"] = y.detach(), x.grad
        out["bn_running"] = (bn.running_mean.clone(), bn.running_var.clone())
        bn.eval()
        out["bn_eval"] = bn(data["bn_x"][rows]).detach()

        # gather keeps rank order and routes gradients back
        local = torch.full((2, 1), float(rank), requires_grad=True)
        gathered = gather(local)
        out["gathered"] = gathered.detach()
        (gathered * torch.arange(4.0).view(4, 1)).sum().backward()
        out["gather_grad"] = local.grad

        # each SSL framework under DDP with global batch norm, half of the batch per rank
        x1, x2 = data["x1"][rows], data["x2"][rows]
        for name in SSL_OPTIONS:
            model = tiny_framework(name, seed=99 + rank)  # different init per rank on purpose ...
            model.load_state_dict(data[f"state_{name}"])  # ... then the shared state
            model = convert_sync_batchnorm(model)
            ddp = nn.parallel.DistributedDataParallel(model)
            loss, _ = ddp(x1, x2)
            loss.backward()
            out[f"loss_{name}"] = loss.detach()
            out[f"grads_{name}"] = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
            out[f"running_{name}"] = model.encoder.stem[1].running_mean.clone()
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process_full_batch(tmp_path):
    torch.manual_seed(0)
    bn = nn.BatchNorm3d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    bn_x = torch.randn(8, 3, 2, 3, 3) * 2 + 1
    bn_upstream = torch.randn(8, 3, 2, 3, 3)
    x1, x2, _ = tiny_batch(8)
    data = {"bn": bn.state_dict(), "bn_x": bn_x, "bn_upstream": bn_upstream, "x1": x1, "x2": x2}
    for name in SSL_OPTIONS:
        data[f"state_{name}"] = tiny_framework(name, seed=5).state_dict()
    torch.save(data, tmp_path / "inputs.pt")

    # fork: the children inherit the imported modules (spawn re-imports torch: ~10 s more on 2 cores)
    context = mp.start_processes(
        two_rank_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two-process gloo test did not finish within 120 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    assert [r["world"] for r in ranks] == [(0, 2), (1, 2)]
    assert [r["is_main"] for r in ranks] == [True, False]
    assert ranks[0]["bn_type"] == "GlobalBatchNorm"

    # batch norm: one nn.BatchNorm3d on the full batch
    reference = copy.deepcopy(bn)
    x = bn_x.clone().requires_grad_()
    y = reference(x)
    (y * bn_upstream).sum().backward()
    tol = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(torch.cat([r["bn_y"] for r in ranks]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([r["bn_grad"] for r in ranks]), x.grad, **tol)
    for r in ranks:
        torch.testing.assert_close(r["bn_running"][0], reference.running_mean, **tol)
        torch.testing.assert_close(r["bn_running"][1], reference.running_var, **tol)
    reference.eval()
    torch.testing.assert_close(torch.cat([r["bn_eval"] for r in ranks]), reference(bn_x).detach(), **tol)

    # gather: rank order, and d/d local = sum over both ranks' losses of the weights of its rows
    expected = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    for r in ranks:
        torch.testing.assert_close(r["gathered"], expected)
    torch.testing.assert_close(ranks[0]["gather_grad"], 2 * torch.tensor([[0.0], [1.0]]))
    torch.testing.assert_close(ranks[1]["gather_grad"], 2 * torch.tensor([[2.0], [3.0]]))

    # frameworks: DDP-averaged gradients equal the full-batch gradient of the full-batch loss
    for name in SSL_OPTIONS:
        model = tiny_framework(name, seed=0)
        model.load_state_dict(data[f"state_{name}"])
        loss, _ = model(x1, x2)
        loss.backward()
        rank_losses = [r[f"loss_{name}"] for r in ranks]
        if name == "byol":  # per-sample loss: each rank has the mean over its half
            assert (sum(rank_losses) / 2).item() == pytest.approx(loss.item(), rel=1e-5)
        else:  # loss over the gathered global batch: identical on both ranks
            for rank_loss in rank_losses:
                assert rank_loss.item() == pytest.approx(loss.item(), rel=1e-5)
        for key, p in model.named_parameters():
            if not p.requires_grad:
                continue
            # float32 sums in a different order: tolerance relative to the gradient's scale
            atol = max(1e-4 * p.grad.abs().max().item(), 1e-6)
            for r in ranks:
                torch.testing.assert_close(
                    r[f"grads_{name}"][key], p.grad, atol=atol, rtol=1e-3, msg=lambda m: f"{name} {key}: {m}"
                )
        for r in ranks:
            torch.testing.assert_close(r[f"running_{name}"], model.encoder.stem[1].running_mean, **tol)

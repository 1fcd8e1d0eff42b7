"""The 0.1.0 protocol made checkable: BatchNorm cancels input scaling, a class-discriminative
Grad-CAM target on a constructed case, detection C chosen by video, BYOL target features, the
experiment configs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from vididi import config as cfgmod
from vididi.evaluation.analysis import attention_share, feature_norm_target, grad_cam, probe_logit_targets
from vididi.evaluation.probe import fit_probe, grouped_split, linear_probe, select_regularisation
from vididi.ssl.models import build_backbone
from vididi.utils import VididiError

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------
# Finding 4: with one forward pass per view, BatchNorm after the bias-free first convolution removes
# a constant factor on the input, so derivative scaling (`scaling: dataset` vs `none`) cannot matter.


def test_small3d_in_train_mode_ignores_a_constant_input_scale():
    torch.manual_seed(0)
    model = build_backbone("small3d").double()
    x = torch.randn(8, 3, 8, 32, 32, dtype=torch.float64)
    model.train()
    with torch.no_grad():
        y, y_scaled = model(x), model(0.09 * x)
    rel = ((y - y_scaled).abs().max() / y.abs().max()).item()
    assert rel < 1e-2  # only BatchNorm's eps differs (measured ~1e-3)
    # the control: with fixed (running) statistics the same factor changes the features a lot
    model.eval()
    with torch.no_grad():
        y, y_scaled = model(x), model(0.09 * x)
    assert ((y - y_scaled).abs().max() / y.abs().max()).item() > 0.2


# --------------------------------------------------------------------------------------------------
# Finding 2: the probe-logit Grad-CAM separates a model whose class evidence is the moving object
# from one whose evidence is the scene. Videos: a sprite moving 1 px per frame over a static
# checkerboard; the class sets both the sprite's colour (R or G) and the checkerboard's channel.

T, S, OBJ = 6, 20, 4


def constructed_video(rng, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    frames = np.full((3, T, S, S), 0.4)
    yy, xx = np.mgrid[0:S, 0:S]
    frames[label] += rng.uniform(0.08, 0.12) * (((yy + xx + rng.integers(2)) % 2) * 2 - 1.0)[None]
    masks = np.zeros((T, S, S), bool)
    y0, x0, value = rng.integers(2, S - OBJ - 2), rng.integers(1, S - OBJ - T - 1), rng.uniform(0.85, 0.95)
    for t in range(T):
        frames[:, t, y0 : y0 + OBJ, x0 + t : x0 + t + OBJ] = 0.4
        frames[label, t, y0 : y0 + OBJ, x0 + t : x0 + t + OBJ] = value
        masks[t, y0 : y0 + OBJ, x0 + t : x0 + t + OBJ] = True
    return torch.tensor(frames, dtype=torch.float32), torch.tensor(masks)


class TinyEncoder(nn.Module):
    """last_block = conv (fixed weights) + ReLU; the embedding is its global average."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        conv = nn.Conv3d(3, weight.shape[0], tuple(weight.shape[2:]), bias=False)
        with torch.no_grad():
            conv.weight.copy_(weight)
        self.last_block = nn.Sequential(conv, nn.ReLU())

    def forward(self, x):
        return self.last_block(x).mean(dim=(2, 3, 4))


CHANNELS = [(0, 1), (0, -1), (1, 1), (1, -1)]  # (colour channel, sign)


def motion_encoder() -> TinyEncoder:
    """Temporal differences of R and G: responds only where something moves."""
    w = torch.zeros(4, 3, 2, 1, 1)
    for k, (c, sign) in enumerate(CHANNELS):
        w[k, c, 1], w[k, c, 0] = sign, -sign
    return TinyEncoder(w)


def scene_encoder() -> TinyEncoder:
    """Time-averaged Laplacian of R and G: responds to the static texture."""
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)
    w = torch.zeros(4, 3, T, 3, 3)
    for k, (c, sign) in enumerate(CHANNELS):
        w[k, c] = sign * lap / T
    return TinyEncoder(w)


def probe_logit_shares(encoder: nn.Module) -> tuple[float, float]:
    """(mean probe-logit Grad-CAM object share, mean uniform-map share) over held-out videos."""
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    videos = [constructed_video(rng, int(label)) for label in labels]
    clips, masks = torch.stack([v for v, _ in videos]), torch.stack([m for _, m in videos])
    with torch.no_grad():
        features = encoder(clips).numpy()
    target_for = probe_logit_targets(fit_probe(features[:24], labels[:24], seed=0))
    shares, uniform = [], []
    for i in range(24, 40):
        cam = grad_cam(encoder, encoder.last_block, clips[i : i + 1], target_fn=target_for(int(labels[i])))
        shares.append(attention_share(cam, masks[i : i + 1])[0])
        uniform.append(attention_share(torch.ones_like(cam), masks[i : i + 1])[0])
    assert np.isfinite(shares).all()
    return float(np.mean(shares)), float(np.mean(uniform))


def test_probe_logit_cam_separates_object_evidence_from_scene_evidence():
    motion, uniform = probe_logit_shares(motion_encoder())
    scene, _ = probe_logit_shares(scene_encoder())
    assert 0.05 < uniform < 0.15  # the dilated sprite's area share
    assert motion > 0.8  # measured 1.0: all the evidence is on the sprite
    assert scene < uniform  # measured 0.062 vs 0.09: the evidence is the background


def test_probe_logit_target_is_the_probe_stage_classifier():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 2, 20, axis=0)
    y = np.repeat([0, 1, 2], 20)
    model = fit_probe(x[::2], y[::2], seed=3)
    result = linear_probe(x[::2], y[::2], x[1::2], y[1::2], seed=3)
    assert model.C == result["C"]
    assert np.mean(model.classes[model.logits(x[1::2]).argmax(1)] == y[1::2]) == pytest.approx(result["top1"])
    z = torch.tensor(x[:4], requires_grad=True)
    logit = probe_logit_targets(model)(2)(z)
    assert logit.shape == (4,) and np.allclose(logit.detach().numpy(), model.logits(x[:4])[:, 2])
    logit.sum().backward()
    assert z.grad is not None
    # two classes: the stored (-w, w) / 2 rows give the same decisions as scikit-learn's one row
    two = fit_probe(x[:40:2], y[:40:2], seed=0)
    two_result = linear_probe(x[:40:2], y[:40:2], x[1:40:2], y[1:40:2], seed=0)
    assert two.coef.shape == (2, 5) and two.C == two_result["C"]
    assert np.mean(two.classes[two.logits(x[1:40:2]).argmax(1)] == y[1:40:2]) == pytest.approx(two_result["top1"])
    assert feature_norm_target(torch.ones(2, 3)).tolist() == [3.0, 3.0]


# --------------------------------------------------------------------------------------------------
# Finding 5: the detection classifier's C validated on held-out VIDEOS


def test_grouped_split_keeps_every_video_on_one_side():
    videos = np.repeat([f"v{i}" for i in range(10)], 7)  # 7 overlapping windows per video
    fit, val = grouped_split(videos, 0.2, seed=0)
    assert not set(videos[fit]) & set(videos[val])
    assert len(set(videos[val])) == 2 and len(fit) + len(val) == len(videos)
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(videos)))
    assert grouped_split(videos, 0.2, seed=0)[1].tolist() == val.tolist()  # seeded
    with pytest.raises(Exception, match="2 groups"):
        grouped_split(["a"] * 5, 0.2, 0)


def test_detection_c_is_validated_on_held_out_videos_unless_there_are_too_few():
    from vididi.stages.detection import MIN_VIDEOS_FOR_VIDEO_SPLIT, c_validation_groups

    many = np.repeat([f"v{i}" for i in range(MIN_VIDEOS_FOR_VIDEO_SPLIT)], 4)
    groups, how = c_validation_groups(many, "videos")
    assert groups.tolist() == many.tolist() and how.startswith("held-out training videos")
    few = many[: 4 * (MIN_VIDEOS_FOR_VIDEO_SPLIT - 1)]
    groups, how = c_validation_groups(few, "videos")
    assert groups is None and f"fell back to windows: {MIN_VIDEOS_FOR_VIDEO_SPLIT - 1} training videos" in how
    groups, how = c_validation_groups(many, "windows")
    assert groups is None and "fell back" not in how


def test_select_regularisation_by_video_validates_on_whole_held_out_videos():
    """Windows of one video are near-copies of each other and the features carry no class signal. On
    windows, a copy of every validation window sits in the fit part, so memorising scores 1; on
    held-out videos the score is what the classifier does on videos it never saw (about chance),
    recomputed here by hand from the documented rule."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from vididi.evaluation.probe import DEFAULT_MAX_ITER

    rng = np.random.default_rng(0)
    n_videos, per_video, Cs = 30, 6, [0.01, 100.0]
    videos = np.repeat(np.arange(n_videos), per_video)
    y = np.repeat(np.arange(n_videos) % 3, per_video)
    x = np.repeat(rng.normal(size=(n_videos, 40)), per_video, axis=0) + rng.normal(0, 0.01, (n_videos * per_video, 40))
    _, by_windows = select_regularisation(x, y, Cs=Cs, seed=0)
    best, by_videos = select_regularisation(x, y, Cs=Cs, seed=0, groups=videos)
    assert by_windows[100.0] == 1.0
    assert max(by_videos.values()) < 0.5  # chance is 1/3: nothing to memorise across videos
    # by hand: round(0.2 * 30) = 6 videos held out, the first 6 of the seeded permutation of the names
    val = np.isin(videos, np.random.default_rng(0).permutation(np.arange(n_videos))[:6])
    assert val.sum() == 6 * per_video
    scaler = StandardScaler().fit(x[~val])
    for C in Cs:
        clf = LogisticRegression(C=C, max_iter=DEFAULT_MAX_ITER).fit(scaler.transform(x[~val]), y[~val])
        assert by_videos[C] == pytest.approx(np.mean(clf.predict(scaler.transform(x[val])) == y[val]), abs=1e-12)
    assert best == min(C for C in Cs if by_videos[C] == max(by_videos.values()))


# --------------------------------------------------------------------------------------------------
# Finding 1: BYOL settings and its target encoder


def test_byol_final_checkpoint_keeps_the_target_encoder(tmp_path):
    from vididi.ssl.encoder import load_encoder
    from vididi.ssl.trainer import _write_final, build_model

    settings = {"seed": 0, "backbone": {"name": "small3d", "widths": [4, 4, 8, 8]},
                "framework": {"name": "byol", "projector": [16, 8], "predictor": [16, 8], "tau_base": 0.9, "tau_final": 0.9}}  # fmt: skip
    model = build_model(settings, num_classes=2)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)  # online and target now differ
    index = SimpleNamespace(stats={"mean": [0.5] * 3, "sigma": [1.0] * 3})
    _write_final(tmp_path / "final.pt", model, settings, "h", index, steps=1)
    online, _, _ = load_encoder(tmp_path / "final.pt")
    target, _, _ = load_encoder(tmp_path / "final.pt", which="target_encoder")
    for name, value in model.target_encoder.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)
    assert not torch.equal(online.state_dict()["stem.0.weight"], target.state_dict()["stem.0.weight"])
    # a framework without a target encoder: only loading one fails, saying so
    vicreg = build_model({**settings, "framework": {"name": "vicreg", "projector": [16, 8]}}, num_classes=2)
    _write_final(tmp_path / "v.pt", vicreg, settings, "h", index, steps=1)
    assert "target_encoder" not in torch.load(tmp_path / "v.pt", map_location="cpu", weights_only=True)
    with pytest.raises(VididiError, match="target_encoder"):
        load_encoder(tmp_path / "v.pt", which="target_encoder")


def test_variant_overrides_and_unchanged_hashes(tmp_path):
    from conftest import tiny_config

    base = tiny_config(tmp_path, runs=[{"dataset": "synthetic", "framework": "byol", "variant": ["base", "t90"]}],
                       variants={"t90": {"schedule": "frames_only", "pretrain": {"lr": 0.004, "steps": 7},
                                         "frameworks": {"byol": {"tau_base": 0.9, "tau_final": 0.9}}}})  # fmt: skip
    runs = {r.variant: r for r in cfgmod.expand_runs(base)}
    plain, tuned = (cfgmod.pretrain_settings(base, runs[v]) for v in ("base", "t90"))
    assert tuned["pretrain"]["lr"] == 0.004 and tuned["pretrain"]["steps"] == 7
    assert tuned["framework"]["tau_base"] == tuned["framework"]["tau_final"] == 0.9  # a constant tau
    assert "tau_final" not in plain["framework"]  # at its default: the hash of older BYOL runs holds
    # the budget is recorded in steps only (pretrain.epochs resolves to steps), and the keys added since
    # 0.2.0 are left out at their defaults: older hashes hold
    assert plain["pretrain"] == {k: v for k, v in base["pretrain"].items()
                                 if k not in (*cfgmod.NOT_WEIGHTS, "epochs", "lars_eta", "predictor_lr_scale")}  # fmt: skip
    constant = tiny_config(tmp_path, frameworks={"byol": {"tau_base": 0.96, "tau_final": 0.96}},
                           runs=[{"dataset": "synthetic", "framework": "byol"}])  # fmt: skip
    assert cfgmod.pretrain_settings(constant, cfgmod.expand_runs(constant)[0])["framework"]["tau_final"] == 0.96
    with pytest.raises(cfgmod.ConfigError, match="tau_base 0.99 is above tau_final 0.9"):
        tiny_config(tmp_path, frameworks={"byol": {"tau_final": 0.9}}, runs=[{"dataset": "synthetic", "framework": "byol"}])
    # BYOL's own optimiser keys reach BYOL runs only, and a variant's own overrides win over them
    own = tiny_config(tmp_path, frameworks={"byol": {"pretrain": {"optimizer": "lars", "lr": 2.0}}},
                      runs=[{"dataset": "synthetic", "framework": ["byol", "vicreg"], "variant": ["base", "t90"]}],
                      variants={"t90": {"schedule": "frames_only", "pretrain": {"lr": 0.004}}})  # fmt: skip
    made = {(r.framework, r.variant): cfgmod.pretrain_settings(own, r) for r in cfgmod.expand_runs(own)}
    assert made["byol", "base"]["pretrain"] == {**plain["pretrain"], "optimizer": "lars", "lr": 2.0}
    assert cfgmod.run_pretrain_options(own, made["byol", "base"])["optimizer"] == "lars"  # what the trainer uses
    assert made["byol", "t90"]["pretrain"]["optimizer"] == "lars" and made["byol", "t90"]["pretrain"]["lr"] == 0.004
    assert made["vicreg", "base"]["pretrain"] == plain["pretrain"]
    assert "pretrain" not in made["byol", "base"]["framework"]  # hashed once, in the pretrain settings
    # the evaluation defaults are the 0.1.0 protocol (hashed, so older outputs are remade); the
    # legacy values leave the evaluation hashes exactly as before 0.1.0
    ev = cfgmod.evaluation_settings(base)
    assert ev["target_encoder"] is True and ev["detection"]["c_selection"] == "videos"
    assert cfgmod.analysis_settings(base) == [{"cam_target": "probe_logit"}]
    legacy = tiny_config(tmp_path, analysis={"cam_target": "feature_norm"},
                         evaluation={"target_encoder": False, "detection": {"c_selection": "windows"}})  # fmt: skip
    ev = cfgmod.evaluation_settings(legacy)
    assert "target_encoder" not in ev and "c_selection" not in ev["detection"]
    assert cfgmod.analysis_settings(legacy) == []


# each experiment config with the configs it is layered on (after config.yaml)
EXPERIMENTS = {"byol-tau": [], "byol-tuning": [], "byol": [], "scene-bias": [], "scene-style": [], "bn-recalibration": ["scene-bias"], "supervised-ceiling": [],
               "legacy-protocol": ["synthetic-full"]}  # fmt: skip


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_validate(name):
    layers = [REPO / "configs" / f"{layer}.yaml" for layer in [*EXPERIMENTS[name], name]]
    config = cfgmod.load_config([REPO / "config.yaml", *layers])
    runs = cfgmod.expand_runs(config)
    assert runs
    for run in runs:  # choosing nothing on test: tuning configs use split 2
        if name in ("byol-tau", "byol-tuning", "supervised-ceiling"):
            assert config["datasets"][run.dataset]["split"] == "2"


# --------------------------------------------------------------------------------------------------
# The 0.1.0 protocol (the defaults) end to end on the tiny dataset: a BYOL run with a constant tau,
# its target encoder's features, the probe-logit attention and the detection C chosen by video


def test_protocol_options_end_to_end(tiny_data, tmp_path, one_torch_thread):
    import json

    from conftest import tiny_config
    from vididi.layout import read_features
    from vididi.stages import detection, probe, retrieval
    from vididi.stages.attention import main as analyse
    from vididi.stages.features import main as extract_features
    from vididi.stages.pretrain import main as pretrain

    evaluate = SimpleNamespace(retrieval=retrieval.main, probe=probe.main, detection=detection.main)

    config = tiny_config(
        tmp_path, data_dir=tiny_data[0]["data_dir"], device="cpu", threads=1, pretrain={"steps": 3},
        runs=[{"dataset": "synthetic", "framework": "byol", "variant": "base", "backbone": "small3d", "seed": 0}],
        frameworks={"byol": {"tau_base": 0.9, "tau_final": 0.9}},
    )  # fmt: skip
    (run,) = cfgmod.expand_runs(config)
    pretrain(config, run)
    features = read_features(extract_features(config, run, "synthetic"))
    assert features["target_test"]["features"].shape == features["test"]["features"].shape
    assert not np.array_equal(features["target_test"]["features"], features["test"]["features"])
    metrics = {stage: json.loads(getattr(evaluate, stage)(config, run, "synthetic").read_text())
               for stage in ("retrieval", "probe", "detection")}  # fmt: skip
    assert {"R@1", "target_R@1"} <= set(metrics["retrieval"]["metrics"])
    assert {"top1", "target_top1"} <= set(metrics["probe"]["metrics"])
    # the tiny dataset has 2 training videos: too few to hold one out, so C falls back to windows
    assert "fell back to windows: 2 training videos" in metrics["detection"]["protocol"]["C_selected_on"]
    analysis = json.loads(analyse(config, run, "synthetic").read_text())
    assert analysis["protocol"]["object_attention"]["cam_target"] == "probe_logit"
    assert 0 < analysis["metrics"]["object_attention_uniform"] < 1

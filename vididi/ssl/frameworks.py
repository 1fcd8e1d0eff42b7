"""Host frameworks (SimCLR, BYOL, VICReg, supervised) as nn.Modules that own backbone + heads + loss.

One call shape for all of them, so the trainer does not branch:

    model = build_framework("vicreg", build_backbone("small3d"), {"projector": [512, 512, 512]})
    loss, terms = model(x1, x2, labels)        # x1, x2: the two derivative views (B, C, T, H, W)
    loss.backward(); optimizer.step()
    model.after_step(step, total_steps)        # BYOL's target EMA update; a no-op for the others

- SSL frameworks use x1 and x2 and ignore `labels`; "supervised" uses x1 and `labels` only and
  ignores x2 (`model.uses_labels` tells which kind a framework is).
- `terms` maps names to detached 0-d tensors for logging (call .item() when logging, not every step).
- Under DistributedDataParallel call the wrapper (`ddp_model(x1, x2, labels)`, not `.loss`), so DDP
  sees the forward; `after_step` and `encoder` live on `ddp_model.module`. SimCLR and VICReg gather the
  embeddings of all ranks (with gradient) before the loss, so negatives / statistics cover the global
  batch; BYOL's loss is per sample and needs no gather.
- The two views go through the networks in two separate passes, so BatchNorm batch statistics are
  those of one view (one derivative order) at a time, as in the official VICReg and BYOL code.
- Give the optimiser only `p for p in model.parameters() if p.requires_grad` (BYOL's target has none).
- `model.encoder` is the backbone that evaluation uses; checkpoint keys of it start with "encoder.".
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vididi.ssl.distributed import gather
from vididi.ssl.losses import byol, byol_tau, nt_xent, vicreg
from vididi.ssl.models import Backbone, mlp_head
from vididi.utils import VididiError

Terms = dict[str, Tensor]

DEFAULT_PROJECTOR = (512, 512, 512)


class Framework(nn.Module):
    """Common interface; see the module docstring."""

    name: str = ""
    uses_labels: bool = False

    def __init__(self, encoder: Backbone) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x1: Tensor, x2: Tensor | None = None, labels: Tensor | None = None) -> tuple[Tensor, Terms]:
        raise NotImplementedError

    def loss(self, x1: Tensor, x2: Tensor | None = None, labels: Tensor | None = None) -> tuple[Tensor, Terms]:
        """(loss, terms) for one batch; the same as calling the module."""
        return self(x1, x2, labels)

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (step 0-based); only BYOL does something here."""

    def _two_views(self, x1: Tensor, x2: Tensor | None) -> Tensor:
        if x2 is None:
            raise ValueError(f"{self.name} needs two views: call it as model(x1, x2)")
        if x1.shape != x2.shape:
            raise ValueError(f"{self.name}: the two views differ in shape: {tuple(x1.shape)} vs {tuple(x2.shape)}")
        return x2


class SimCLR(Framework):
    """z = projector(encoder(x)); loss = NT-Xent over the globally gathered (z1, z2) (`losses.nt_xent`)."""

    name = "simclr"

    def __init__(self, encoder: Backbone, projector: Sequence[int] = DEFAULT_PROJECTOR, temperature: float = 0.1) -> None:
        super().__init__(encoder)
        if not temperature > 0:
            raise VididiError(f"simclr temperature must be > 0, got {temperature}")
        self.projector = mlp_head(encoder.feature_dim, projector)
        self.temperature = float(temperature)

    def forward(self, x1: Tensor, x2: Tensor | None = None, labels: Tensor | None = None) -> tuple[Tensor, Terms]:
        x2 = self._two_views(x1, x2)
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        loss = nt_xent(gather(z1), gather(z2), self.temperature)
        return loss, {"nt_xent": loss.detach()}


class VICReg(Framework):
    """z = projector(encoder(x)); loss = VICReg on the globally gathered (z1, z2) (`losses.vicreg`)."""

    name = "vicreg"

    def __init__(
        self,
        encoder: Backbone,
        projector: Sequence[int] = DEFAULT_PROJECTOR,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        for key, value in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
            if not value >= 0:
                raise VididiError(f"vicreg {key} must be >= 0, got {value}")
        self.projector = mlp_head(encoder.feature_dim, projector)
        self.weights = {"sim_weight": float(sim_weight), "var_weight": float(var_weight), "cov_weight": float(cov_weight)}

    def forward(self, x1: Tensor, x2: Tensor | None = None, labels: Tensor | None = None) -> tuple[Tensor, Terms]:
        x2 = self._two_views(x1, x2)
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        return vicreg(gather(z1), gather(z2), **self.weights)


class BYOL(Framework):
    """Online: predictor(projector(encoder(x))); target: EMA copy of encoder + projector, no gradient.

    loss = byol(p1, z2') + byol(p2, z1')   (symmetrised; z' = target projections, stop-gradient)
    After each optimiser step: target <- tau * target + (1 - tau) * online (parameters), with
    tau = byol_tau(step, total_steps, tau_base, tau_final). The target's BatchNorm buffers are its
    own (it runs in train mode on the same views). The target is registered as submodules
    `target_encoder` / `target_projector`, so state_dict() and checkpoints carry it.
    `predictor` defaults to (projector[0], projector[-1]); its last width must equal projector[-1].
    """

    name = "byol"

    def __init__(
        self,
        encoder: Backbone,
        projector: Sequence[int] = DEFAULT_PROJECTOR,
        predictor: Sequence[int] | None = None,
        tau_base: float = 0.99,
        tau_final: float = 1.0,
    ) -> None:
        super().__init__(encoder)
        projector = tuple(projector)
        predictor = (projector[0], projector[-1]) if predictor is None else tuple(predictor)
        if predictor[-1] != projector[-1]:
            raise VididiError(
                f"byol predictor must end at the projector's width {projector[-1]}, got predictor {list(predictor)}"
            )
        if not 0.0 <= tau_base <= tau_final <= 1.0:
            raise VididiError(f"byol needs 0 <= tau_base <= tau_final <= 1, got tau_base={tau_base}, tau_final={tau_final}")
        self.projector = mlp_head(encoder.feature_dim, projector)
        self.predictor = mlp_head(projector[-1], predictor)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.tau_base = float(tau_base)
        self.tau_final = float(tau_final)
        self.tau = self.tau_base  # the rate of the latest EMA update, for logging

    def forward(self, x1: Tensor, x2: Tensor | None = None, labels: Tensor | None = None) -> tuple[Tensor, Terms]:
        x2 = self._two_views(x1, x2)
        p1 = self.predictor(self.projector(self.encoder(x1)))
        p2 = self.predictor(self.projector(self.encoder(x2)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(x1))
            t2 = self.target_projector(self.target_encoder(x2))
        loss = byol(p1, t2) + byol(p2, t1)
        return loss, {"byol": loss.detach()}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.tau = byol_tau(step, total_steps, self.tau_base, self.tau_final)
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        target = [*self.target_encoder.parameters(), *self.target_projector.parameters()]
        if len(online) != len(target):
            raise RuntimeError("BYOL online and target networks no longer have the same parameters")
        # lerp: target + (1 - tau) * (online - target) = tau * target + (1 - tau) * online
        torch._foreach_lerp_(target, online, 1.0 - self.tau)


class Supervised(Framework):
    """Linear classifier on the pooled features of x1; loss = cross-entropy with `labels`.

    Uses x1 only (x2 is ignored). terms: 'cross_entropy', 'accuracy' (top-1 on the batch).
    Fine-tuning (ssl/finetune.py) uses it with `dropout` on the pooled features (training only; it
    draws from torch's global generator) and `label_smoothing`; both 0 for supervised pretraining.
    """

    name = "supervised"
    uses_labels = True

    def __init__(self, encoder: Backbone, num_classes: int | None = None, dropout: float = 0.0,
                 label_smoothing: float = 0.0) -> None:  # fmt: skip
        super().__init__(encoder)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise VididiError(f"supervised needs num_classes (an integer >= 2), got {num_classes!r}")
        if not (0.0 <= dropout < 1.0 and 0.0 <= label_smoothing < 1.0):
            raise VididiError(f"dropout and label_smoothing must be in [0, 1), got {dropout}, {label_smoothing}")
        self.classifier = nn.Linear(encoder.feature_dim, num_classes)
        self.dropout, self.label_smoothing = float(dropout), float(label_smoothing)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes) of clips x (dropout in training mode only)."""
        features = self.encoder(x)
        if self.dropout and self.training:
            features = F.dropout(features, self.dropout, training=True)
        return self.classifier(features).float()

    def forward(self, x1: Tensor, x2: Tensor | None = None, labels: Tensor | None = None) -> tuple[Tensor, Terms]:
        if labels is None:
            raise ValueError("supervised needs labels: call it as model(x, labels=labels)")
        if labels.shape != (x1.shape[0],):
            raise ValueError(f"labels must be shaped ({x1.shape[0]},), got {tuple(labels.shape)}")
        logits = self.logits(x1)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"cross_entropy": loss.detach(), "accuracy": accuracy}

    def loss_supervised(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Terms]:
        """(cross-entropy, terms) of the linear classifier on the features of x."""
        return self(x, None, labels)


FRAMEWORKS: dict[str, type[Framework]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "vicreg": VICReg,
    "supervised": Supervised,
}


def framework_options(name: str) -> dict[str, Any]:
    """The options `name` accepts, with their defaults (for config validation and documentation)."""
    _check_name(name)
    params = list(inspect.signature(FRAMEWORKS[name]).parameters.values())[1:]  # skip the encoder
    return {p.name: p.default for p in params}


def build_framework(name: str, backbone: Backbone, options: Mapping[str, Any] | None = None) -> Framework:
    """Framework `name` around `backbone`, configured by `options` (keys: `framework_options(name)`)."""
    allowed = framework_options(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise VididiError(
            f"framework {name!r} got unknown option(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}"
        )
    return FRAMEWORKS[name](backbone, **options)


def _check_name(name: str) -> None:
    if name not in FRAMEWORKS:
        raise VididiError(f"unknown framework {name!r}; choose one of {', '.join(FRAMEWORKS)}")

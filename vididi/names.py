"""The names the pipeline knows, in one torch-free place.

The CLI takes its stage and figure choices from here, the Snakemake rules their wildcard constraints,
and the config validation its backbone list; `tests/test_structure.py` checks every list against
the schema (`config.schema.yaml`) and against the registries that build the objects
(`ssl.models.BACKBONES`, `ssl.frameworks.FRAMEWORKS`, `ssl.schedule.PRESETS`,
`data.synthetic.DYNAMICS`, `stages.figures.DRAW`, `data/registry.yaml`).
"""

from __future__ import annotations

# pipeline stages, in pipeline order: `vididi <stage>`, `vididi/stages/<stage>.py`
STAGES = (
    "generate", "download", "manifest", "extract", "index", "pretrain", "features",
    "retrieval", "probe", "detection", "attention", "finetune", "export", "summary", "figures",
)  # fmt: skip
# the stages that score a run's frozen features and write metrics/<stage>-<eval_dataset>.json
METRIC_STAGES = ("retrieval", "probe", "detection")
# figures of a dataset's runs: `vididi figures --figure NAME`, results/<dataset>/figures/NAME.png
FIGURES = ("derivatives", "tsne", "attention", "curves", "bars", "label_efficiency")
# figures that need a baseline and a ViDiDi run of `figures.framework` (config.comparison_runs)
COMPARISON_FIGURES = ("tsne", "attention")
# figures that need more than one label fraction (evaluation.label_fractions)
LABEL_FIGURES = ("label_efficiency",)

BACKBONES = ("small3d", "r3d_18", "r2plus1d_18", "mc3_18", "s3d")
SSL_FRAMEWORKS = ("simclr", "byol", "vicreg")
# random: the untrained encoder (the floor; fine-tuned, the scratch baseline); external: an encoder file
FRAMEWORKS = (*SSL_FRAMEWORKS, "supervised", "random", "external")
PRESETS = ("all9", "cross6", "adjacent", "frames_only")  # named order-pair schedules
# the synthetic dataset's motion classes (data.synthetic.DYNAMICS draws each)
SYNTHETIC_CLASSES = (
    "LinearMotion", "Accelerating", "Decelerating", "Projectile", "Bouncing", "Orbit", "Oscillation", "Pulsing",
)  # fmt: skip
SOURCES = ("synthetic", "ucf101", "hmdb51", "kinetics400", "thumos14", "folder")
DOWNLOADABLE_SOURCES = ("ucf101", "hmdb51", "kinetics400", "thumos14")  # in data/registry.yaml


def pattern(names) -> str:
    """A regular expression matching exactly these names (a Snakemake wildcard constraint)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!)"

# Pretraining: one job per run (dataset x framework x variant x backbone x seed), resumable.


rule pretrain:
    """Pretrain one run (it launches torchrun itself when pretrain.gpus > 1); resumes from last.pt."""
    input:
        lambda w: index_inputs(w.dataset),
    output:
        L.final_checkpoint(config, RUN),
    log:
        L.run_log(config, RUN, "pretrain"),
    conda:
        CONDA_ENV
    benchmark:
        L.run_benchmark(config, RUN, "pretrain")
    wildcard_constraints:
        run=r"(?!external-)[^/]+",
    params:
        settings=run_hash,
    threads: config["threads"]
    resources:
        gpu=config["pretrain"]["gpus"],
    shell:
        "vididi pretrain --dataset {wildcards.dataset} --run {wildcards.run} > {log} 2>&1"


rule external:
    """An external run: its encoder file (a final.pt, an export, a torchvision state dict) becomes its final.pt; no training."""
    input:
        unpack(final_inputs),
    output:
        L.final_checkpoint(config, RUN),
    log:
        L.run_log(config, RUN, "pretrain"),
    conda:
        CONDA_ENV
    wildcard_constraints:
        run=r"external-[^/]+",
    params:
        settings=run_hash,
    shell:
        "vididi pretrain --dataset {wildcards.dataset} --run {wildcards.run} > {log} 2>&1"


rule export:
    """A run's encoder as a plain (torchvision-format) state dict with a JSON card: settings, metrics, provenance."""
    input:
        checkpoint=L.final_checkpoint(config, RUN),
        index=lambda w: index_inputs(w.dataset),
        metrics=lambda w: run_metric_files(run_of(w)),
    output:
        encoder=L.export_file(config, RUN),
        card=L.export_card(L.export_file(config, RUN)),
    log:
        L.run_log(config, RUN, "export"),
    conda:
        CONDA_ENV
    params:
        settings=lambda w: vc.settings_hash(vc.export_settings(config, run_of(w))),
    threads: config["threads"]
    shell:
        "vididi export --dataset {wildcards.dataset} --run {wildcards.run} > {log} 2>&1"

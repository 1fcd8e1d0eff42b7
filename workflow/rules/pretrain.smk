# Pretraining: one job per run (dataset x framework x variant x backbone x seed), resumable.


rule pretrain:
    """Pretrain one run (torchrun with one process per GPU when pretrain.gpus > 1); resumes from last.pt."""
    input:
        index=lambda w: L.index_file(config, w.dataset),
        info=lambda w: L.info_file(config, w.dataset),
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
        cmd=lambda w: launcher("pretrain"),
        settings=lambda w: vc.settings_hash(vc.pretrain_settings(config, run_of(w))),
    threads: config["threads"]
    resources:
        gpu=config["pretrain"]["gpus"],
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run-name {wildcards.run} > {log} 2>&1"


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
        cmd=vididi("pretrain"),
        settings=lambda w: vc.settings_hash(vc.pretrain_settings(config, run_of(w))),
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run-name {wildcards.run} > {log} 2>&1"


rule export:
    """A run's encoder as a plain (torchvision-format) state dict with a JSON card: settings, metrics, provenance."""
    input:
        checkpoint=L.final_checkpoint(config, RUN),
        index=lambda w: L.index_file(config, w.dataset),
        metrics=lambda w: run_metric_files(run_of(w)),
    output:
        encoder=L.export_file(config, RUN),
        card=L.export_card(L.export_file(config, RUN)),
    log:
        L.run_log(config, RUN, "export"),
    conda:
        CONDA_ENV
    params:
        cmd=vididi("export"),
        settings=lambda w: vc.settings_hash(vc.export_settings(config, run_of(w))),
    threads: config["threads"]
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run {wildcards.run} > {log} 2>&1"

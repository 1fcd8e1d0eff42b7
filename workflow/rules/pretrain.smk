# Pretraining: one job per run (dataset x framework x variant x backbone x seed), resumable.


rule pretrain:
    """Pretrain one run (torchrun with one process per GPU when pretrain.gpus > 1); resumes from last.pt."""
    input:
        index=lambda w: L.index_file(config, w.dataset),
        info=lambda w: L.info_file(config, w.dataset),
        manifest=budget_manifest,
    output:
        L.final_checkpoint(config, RUN),
    log:
        L.run_log(config, RUN, "pretrain"),
    conda:
        CONDA_ENV
    benchmark:
        L.run_benchmark(config, RUN, "pretrain")
    params:
        cmd=pretrain_launcher,
        settings=pretrain_hash,
    threads: config["threads"]
    resources:
        gpu=config["pretrain"]["gpus"],
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run-name {wildcards.run} > {log} 2>&1"

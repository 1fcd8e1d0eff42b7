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
    params:
        settings=run_hash,
    threads: config["threads"]
    resources:
        gpu=config["pretrain"]["gpus"],
    shell:
        "vididi pretrain --dataset {wildcards.dataset} --run {wildcards.run} > {log} 2>&1"

# Pretraining: one job per run (dataset x framework x variant x backbone x seed), resumable.


rule pretrain:
    input:
        index=DATA / "shards" / "{dataset}" / "index.tsv",
        info=DATA / "shards" / "{dataset}" / "dataset.json",
    output:
        RESULTS / "{dataset}" / "runs" / "{run}" / "checkpoints" / "final.pt",
    log:
        RESULTS / "{dataset}" / "runs" / "{run}" / "logs" / "pretrain.log",
    conda:
        CONDA_ENV
    benchmark:
        RESULTS / "{dataset}" / "runs" / "{run}" / "benchmarks" / "pretrain.tsv"
    params:
        cmd=pretrain_launcher,
        settings=lambda w: vc.settings_hash(vc.pretrain_settings(config, run_of(w))),
    threads: config["threads"]
    resources:
        gpu=config["pretrain"]["gpus"],
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run-name {wildcards.run} > {log} 2>&1"

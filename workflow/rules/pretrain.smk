# Pretraining: one job per run (dataset x framework x variant x backbone x seed), resumable.


def pretrain_launcher(wildcards):
    """`vididi pretrain`, or torchrun with one process per GPU when a run asks for several."""
    gpus = config["pretrain"]["gpus"]
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m vididi.cli pretrain --config {CONFIG_FILE}"
    return vididi("pretrain")


rule pretrain:
    input:
        index=DATA / "shards" / "{dataset}" / "index.tsv",
        info=DATA / "shards" / "{dataset}" / "dataset.json",
    output:
        RESULTS / "{dataset}" / "runs" / "{run}" / "checkpoints" / "final.pt",
    log:
        RESULTS / "{dataset}" / "runs" / "{run}" / "logs" / "pretrain.log",
    benchmark:
        RESULTS / "{dataset}" / "runs" / "{run}" / "benchmarks" / "pretrain.tsv"
    params:
        cmd=pretrain_launcher,
        settings=lambda w: vc.settings_hash(vc.pretrain_settings(config, run_of(w))),
    threads: config["threads"]
    resources:
        gpu=config["pretrain"]["gpus"],
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run {wildcards.run} > {log} 2>&1"

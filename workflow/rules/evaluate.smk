# Evaluation: frozen features of a run on an evaluation dataset, then one job per metric, then the
# summary table of every run pretrained on a dataset.

RUN_DIR = RESULTS / "{dataset}" / "runs" / "{run}"


rule features:
    input:
        checkpoint=RUN_DIR / "checkpoints" / "final.pt",
        index=DATA / "shards" / "{eval_dataset}" / "index.tsv",
        train_index=DATA / "shards" / "{dataset}" / "index.tsv",
    output:
        RUN_DIR / "features" / "{eval_dataset}.h5",
    log:
        RUN_DIR / "logs" / "features-{eval_dataset}.log",
    conda:
        CONDA_ENV
    benchmark:
        RUN_DIR / "benchmarks" / "features-{eval_dataset}.tsv"
    params:
        cmd=vididi("features"),
        settings=lambda w: eval_hash(w),
    threads: config["threads"]
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run {wildcards.run} --eval-dataset {wildcards.eval_dataset} > {log} 2>&1"


rule metric:
    input:
        RUN_DIR / "features" / "{eval_dataset}.h5",
    output:
        RUN_DIR / "metrics" / "{stage}-{eval_dataset}.json",
    log:
        RUN_DIR / "logs" / "{stage}-{eval_dataset}.log",
    conda:
        CONDA_ENV
    benchmark:
        RUN_DIR / "benchmarks" / "{stage}-{eval_dataset}.tsv"
    wildcard_constraints:
        stage="retrieval|probe|detection",
    params:
        cmd=lambda w: vididi(w.stage),
        settings=lambda w: eval_hash(w),
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run {wildcards.run} --eval-dataset {wildcards.eval_dataset} > {log} 2>&1"


rule summary:
    input:
        lambda w: metric_files(w.dataset),
    output:
        csv=report(RESULTS / "{dataset}" / "summary.csv", caption="../report/summary.rst", category="Results"),
        md=RESULTS / "{dataset}" / "summary.md",
    log:
        RESULTS / "{dataset}" / "logs" / "summary.log",
    conda:
        CONDA_ENV
    params:
        cmd=vididi("summary"),
    shell:
        "{params.cmd} --dataset {wildcards.dataset} > {log} 2>&1"


rule analysis:
    input:
        RUN_DIR / "features" / "{eval_dataset}.h5",
    output:
        metrics=RUN_DIR / "metrics" / "analysis-{eval_dataset}.json",
        maps=RUN_DIR / "analysis" / "attention-{eval_dataset}.h5",
    log:
        RUN_DIR / "logs" / "analysis-{eval_dataset}.log",
    conda:
        CONDA_ENV
    benchmark:
        RUN_DIR / "benchmarks" / "analysis-{eval_dataset}.tsv"
    params:
        cmd=vididi("attention"),
        settings=lambda w: vc.settings_hash([eval_hash(w), config["figures"], *vc.analysis_settings(config)]),
    threads: config["threads"]
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --run {wildcards.run} --eval-dataset {wildcards.eval_dataset} > {log} 2>&1"

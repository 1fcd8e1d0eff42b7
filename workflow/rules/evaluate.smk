# Evaluation: frozen features of a run on an evaluation dataset, then one job per metric and the
# attention analysis, then the summary table of every run pretrained on a dataset.


rule features:
    """Frozen order-0 features of a run on an evaluation dataset (BatchNorm recalibrated first)."""
    input:
        checkpoint=L.final_checkpoint(config, RUN),
        index=lambda w: index_inputs(w.eval_dataset),
        train_index=lambda w: index_inputs(w.dataset),
    output:
        L.features_file(config, RUN, "{eval_dataset}"),
    log:
        L.run_log(config, RUN, "features-{eval_dataset}"),
    conda:
        CONDA_ENV
    benchmark:
        L.run_benchmark(config, RUN, "features-{eval_dataset}")
    params:
        settings=features_hash,
    threads: config["threads"]
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        "vididi features --dataset {wildcards.dataset} --run {wildcards.run} --eval-dataset {wildcards.eval_dataset} > {log} 2>&1"


rule metric:
    """One metric stage over a run's features: retrieval (Recall@k), probe (top-1/5) or detection (mAP)."""
    input:
        L.features_file(config, RUN, "{eval_dataset}"),
    output:
        L.metrics_file(config, RUN, "{stage}", "{eval_dataset}"),
    log:
        L.run_log(config, RUN, "{stage}-{eval_dataset}"),
    conda:
        CONDA_ENV
    benchmark:
        L.run_benchmark(config, RUN, "{stage}-{eval_dataset}")
    wildcard_constraints:
        stage=names.pattern(names.METRIC_STAGES),
    # a run's metric jobs are small: on a cluster they go as one job (group-components in the SLURM profiles)
    group:
        "metrics-{dataset}-{run}"
    params:
        settings=eval_hash,
    shell:
        "vididi {wildcards.stage} --dataset {wildcards.dataset} --run {wildcards.run} --eval-dataset {wildcards.eval_dataset} > {log} 2>&1"


rule finetune:
    """Fine-tune a run's encoder end to end with a new linear head on an evaluation dataset (top-1/top-5; resumable)."""
    input:
        unpack(finetune_inputs),
    output:
        L.metrics_file(config, RUN, "finetune", "{eval_dataset}"),
    log:
        L.run_log(config, RUN, "finetune-{eval_dataset}"),
    conda:
        CONDA_ENV
    benchmark:
        L.run_benchmark(config, RUN, "finetune-{eval_dataset}")
    params:
        settings=finetune_hash,
    threads: config["threads"]
    resources:
        gpu=max(config["pretrain"]["gpus"], 1 if config["device"] == "cuda" else 0),
    shell:
        "vididi finetune --dataset {wildcards.dataset} --run {wildcards.run} --eval-dataset {wildcards.eval_dataset} > {log} 2>&1"


rule label_fraction:
    """The linear probe or fine-tuning on a share of the labelled train videos (evaluation.label_fractions)."""
    input:
        unpack(label_fraction_inputs),
    output:
        L.metrics_file(config, RUN, "{stage}", "{eval_dataset}", "{fraction}"),
    log:
        L.run_log(config, RUN, "{stage}-{eval_dataset}-labels-{fraction}"),
    conda:
        CONDA_ENV
    benchmark:
        L.run_benchmark(config, RUN, "{stage}-{eval_dataset}-labels-{fraction}")
    wildcard_constraints:
        stage="probe|finetune",
        fraction=r"0\.[0-9]+",
    params:
        settings=label_fraction_settings,
    threads: config["threads"]
    resources:
        gpu=lambda w: 0 if w.stage == "probe" else max(config["pretrain"]["gpus"], 1 if config["device"] == "cuda" else 0),
    shell:
        "vididi {wildcards.stage} --dataset {wildcards.dataset} --run {wildcards.run} --eval-dataset {wildcards.eval_dataset} "
        "--label-fraction {wildcards.fraction} > {log} 2>&1"


rule summary:
    """Summary table (CSV + Markdown, mean ± std over seeds) of every run pretrained on a dataset."""
    input:
        lambda w: metric_files(w.dataset),
    output:
        csv=report(L.summary_file(config, "{dataset}", ".csv"), caption="../report/summary.rst", category="Results"),
        md=L.summary_file(config, "{dataset}", ".md"),
    log:
        L.dataset_log(config, "{dataset}", "summary"),
    conda:
        CONDA_ENV
    shell:
        "vididi summary --dataset {wildcards.dataset} > {log} 2>&1"


rule attention:
    """Silhouette of the top test classes, Grad-CAM attention maps and the object-attention share."""
    input:
        L.features_file(config, RUN, "{eval_dataset}"),
    output:
        metrics=L.metrics_file(config, RUN, "attention", "{eval_dataset}"),
        maps=L.attention_file(config, RUN, "{eval_dataset}"),
    log:
        L.run_log(config, RUN, "attention-{eval_dataset}"),
    conda:
        CONDA_ENV
    benchmark:
        L.run_benchmark(config, RUN, "attention-{eval_dataset}")
    params:
        settings=lambda w: vc.settings_hash(vc.attention_settings(config, w.eval_dataset)),
    threads: config["threads"]
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        "vididi attention --dataset {wildcards.dataset} --run {wildcards.run} --eval-dataset {wildcards.eval_dataset} > {log} 2>&1"

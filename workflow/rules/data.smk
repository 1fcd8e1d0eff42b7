# Data stage: raw videos (generated or downloaded) -> manifest -> one extraction job per shard -> index.


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    shard=r"\d{5}",


rule generate:
    output:
        directory(DATA / "raw" / "{dataset}"),
    wildcard_constraints:
        dataset=names_of("synthetic"),
    log:
        DATA / "logs" / "{dataset}" / "generate.log",
    conda:
        CONDA_ENV
    params:
        cmd=vididi("generate"),
        settings=lambda w: raw_hash(w.dataset),
    # usually the first job, alone: rendering in 4 processes (Snakemake lowers this to --cores)
    threads: max(config["threads"], 4)
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"


checkpoint manifest:
    input:
        raw_videos,
    output:
        DATA / "shards" / "{dataset}" / "manifest.json",
    log:
        DATA / "logs" / "{dataset}" / "manifest.log",
    conda:
        CONDA_ENV
    params:
        cmd=vididi("manifest"),
        settings=lambda w: data_hash(w.dataset),
    shell:
        "{params.cmd} --dataset {wildcards.dataset} > {log} 2>&1"


rule extract:
    input:
        DATA / "shards" / "{dataset}" / "manifest.json",
    output:
        DATA / "shards" / "{dataset}" / "shard-{shard}.h5",
    log:
        DATA / "logs" / "{dataset}" / "extract-{shard}.log",
    conda:
        CONDA_ENV
    params:
        cmd=vididi("extract"),
        settings=lambda w: data_hash(w.dataset),
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --shard {wildcards.shard} > {log} 2>&1"


rule index:
    input:
        shard_files,
    output:
        index=DATA / "shards" / "{dataset}" / "index.tsv",
        info=DATA / "shards" / "{dataset}" / "dataset.json",
        bad=DATA / "shards" / "{dataset}" / "bad_videos.tsv",
    log:
        DATA / "logs" / "{dataset}" / "index.log",
    conda:
        CONDA_ENV
    params:
        cmd=vididi("index"),
        settings=lambda w: index_hash(w.dataset),
    threads: config["threads"]
    shell:
        "{params.cmd} --dataset {wildcards.dataset} > {log} 2>&1"


rule download:
    output:
        DATA / "raw" / "{dataset}" / ".downloaded",
    wildcard_constraints:
        dataset=names_of("ucf101", "hmdb51", "kinetics400", "thumos14"),
    log:
        DATA / "logs" / "{dataset}" / "download.log",
    conda:
        CONDA_ENV
    params:
        cmd=vididi("download"),
        settings=lambda w: raw_hash(w.dataset),
    retries: 2
    shell:
        "{params.cmd} --dataset {wildcards.dataset} > {log} 2>&1"

# Data stage: raw videos (generated or downloaded) -> manifest -> one extraction job per shard -> index.
# Consumers name data files with input functions (L.index_file(config, w.dataset)), never with a
# "{dataset}" pattern: a dataset that differs from another only in its split reads that one's shards
# (config.data_owner), so these rules run once per copy of the data.


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    shard=r"\d{5}",


rule generate:
    """Render the synthetic dataset's videos (and object masks) into its raw folder."""
    output:
        directory(L.raw_dir(config, "{dataset}")),
    wildcard_constraints:
        dataset=names_of("synthetic"),
    log:
        L.data_log(config, "{dataset}", "generate"),
    conda:
        CONDA_ENV
    params:
        settings=lambda w: raw_hash(w.dataset),
    # usually the first job, alone: rendering in 4 processes (Snakemake lowers this to --cores)
    threads: max(config["threads"], 4)
    shell:
        "vididi generate --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"


checkpoint manifest:
    """List a dataset's videos, splits and segments; assign the videos to shards."""
    input:
        raw_videos,
    output:
        L.manifest_file(config, "{dataset}"),
    log:
        L.data_log(config, "{dataset}", "manifest"),
    conda:
        CONDA_ENV
    params:
        settings=lambda w: data_hash(w.dataset),
    shell:
        "vididi manifest --dataset {wildcards.dataset} > {log} 2>&1"


rule extract:
    """Decode one shard's videos with ffmpeg into an HDF5 shard; undecodable videos are listed, not fatal."""
    input:
        L.manifest_file(config, "{dataset}"),
    output:
        L.shard_file(config, "{dataset}", "{shard}"),
    log:
        L.data_log(config, "{dataset}", "extract-{shard}"),
    conda:
        CONDA_ENV
    params:
        settings=lambda w: data_hash(w.dataset),
    shell:
        "vididi extract --dataset {wildcards.dataset} --shard {wildcards.shard} > {log} 2>&1"


checkpoint index:
    """Index the shards, list the bad videos, measure the frame mean and derivative scales per split, and
    digest the frames (a checkpoint: the jobs that read the index are planned again with its content)."""
    input:
        shard_files,
    output:
        index=L.index_file(config, "{dataset}"),
        info=L.info_file(config, "{dataset}"),
        bad=L.bad_videos_file(config, "{dataset}"),
    log:
        L.data_log(config, "{dataset}", "index"),
    conda:
        CONDA_ENV
    params:
        settings=lambda w: index_hash(w.dataset),
    threads: config["threads"]
    shell:
        "vididi index --dataset {wildcards.dataset} > {log} 2>&1"


rule download:
    """Download and unpack a registry dataset (resumable, checksummed)."""
    output:
        L.download_marker(config, "{dataset}"),
    wildcard_constraints:
        dataset=names_of(*names.DOWNLOADABLE_SOURCES),
    log:
        L.data_log(config, "{dataset}", "download"),
    conda:
        CONDA_ENV
    params:
        settings=lambda w: raw_hash(w.dataset),
    retries: 2
    shell:
        "vididi download --dataset {wildcards.dataset} > {log} 2>&1"

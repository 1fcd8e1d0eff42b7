# Figures of the runs pretrained on a dataset (PNG + PDF), each marked for `snakemake --report`.


rule figure:
    """One figure of a dataset's runs (derivatives, tsne, attention, curves or bars), PNG + PDF."""
    input:
        figure_inputs,
    output:
        png=report(
            L.figure_file(config, "{dataset}", "{figure}", ".png"),
            caption="../report/figure.rst",
            category="Figures",
            labels={"dataset": "{dataset}", "figure": "{figure}"},
        ),
        pdf=L.figure_file(config, "{dataset}", "{figure}", ".pdf"),
    log:
        L.dataset_log(config, "{dataset}", "figure-{figure}"),
    conda:
        CONDA_ENV
    wildcard_constraints:
        figure=names.pattern(names.FIGURES),
    params:
        caption=lambda w: FIGURE_CAPTIONS[w.figure],
    shell:
        "vididi figures --dataset {wildcards.dataset} --figure {wildcards.figure} > {log} 2>&1"

# Figures of the runs pretrained on a dataset (PNG + PDF), each marked for `snakemake --report`.


rule figure:
    input:
        figure_inputs,
    output:
        png=report(
            RESULTS / "{dataset}" / "figures" / "{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"dataset": "{dataset}", "figure": "{figure}"},
        ),
        pdf=RESULTS / "{dataset}" / "figures" / "{figure}.pdf",
    log:
        RESULTS / "{dataset}" / "logs" / "figure-{figure}.log",
    conda:
        CONDA_ENV
    wildcard_constraints:
        figure="derivatives|tsne|attention|curves|bars",
    params:
        cmd=vididi("figures"),
        caption=lambda w: FIGURE_CAPTIONS[w.figure],
    shell:
        "{params.cmd} --dataset {wildcards.dataset} --figure {wildcards.figure} > {log} 2>&1"

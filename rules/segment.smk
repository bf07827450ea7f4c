# Segment folders of new scans with a model bundle, one job per folder named under config `segment`
# (docs/segment.md): `snakemake segment_all`, or one folder: `snakemake results/segment/<name>`.


localrules:
    segment_all,


rule segment_folder:
    input:
        bundle=segment_bundle,
        scans=segment_input,
    output:
        directory(path("segment")),
    log:
        f"{RESULTS}/logs/segment/{{segment_job}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{segment_job}}.tsv"
    conda:
        "../envs/nnunet.yaml"
    threads: res("predict", "threads")
    resources:
        mem_mb=res("predict", "mem_mb"),
        runtime=res("predict", "runtime"),
        gpu=res("predict", "gpu"),
    params:
        options=segment_options,
    shell:
        "python -m workflow_scripts.segment --bundle {input.bundle:q} --input {input.scans:q} --out {output:q} "
        "--threads {threads} {params.options} > {log:q} 2>&1"


rule segment_all:
    input:
        segment_outputs(),

# Sources of raw scans -> data/raw/<source>/ in the PanSegData raw layout.


rule synthetic_source:
    """The embedded SYNTHETIC demo study (no patient data; labelled synthetic everywhere)."""
    output:
        directory(f"{DATA}/raw/{{source}}"),
    log:
        f"{DATA}/logs/source_{{source}}.log",
    conda:
        "../envs/data.yaml"
    params:
        modalities=source_param("modalities"),
        centers=source_param("centers"),
        cases=source_param("cases_per_center"),
        seed=source_param("seed"),
    shell:
        "python -m workflow_scripts.synthetic --out {output} --modalities {params.modalities} "
        "--centers {params.centers} --cases-per-center {params.cases} --seed {params.seed} > {log} 2>&1"

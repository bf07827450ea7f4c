# Aggregates: per-case table of everything and summary tables (cheap; re-run on any change).


localrules:
    tables,


rule tables:
    input:
        metrics=metrics_all,
    output:
        per_case=path("per_case"),
        csv=path("table", name="summary", ext="csv"),
        md=path("table", name="summary", ext="md"),
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        "../envs/analysis.yaml"
    params:
        study=config["study"],
    shell:
        "python -m workflow_scripts.tables --metrics {input.metrics:q} --study {params.study:q} "
        "--per-case {output.per_case:q} --csv {output.csv:q} --md {output.md:q} > {log:q} 2>&1"

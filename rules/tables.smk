# Aggregates: per-case table of everything and summary tables (cheap; re-run on any change).


localrules:
    tables,


rule tables:
    input:
        metrics=metrics_all,
    output:
        per_case=f"{RESULTS}/tables/per_case.tsv",
        csv=f"{RESULTS}/tables/summary.csv",
        md=f"{RESULTS}/tables/summary.md",
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        "../envs/analysis.yaml"
    params:
        study=config["study"],
    shell:
        "python -m workflow_scripts.tables --metrics {input.metrics} --study '{params.study}' "
        "--per-case {output.per_case} --csv {output.csv} --md {output.md} > {log} 2>&1"

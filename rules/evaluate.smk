# Per-case metrics, one table per modality x model x center.


rule evaluate_center:
    input:
        cases=center_cases,
        masks=center_masks,
    output:
        f"{RESULTS}/{{modality}}/{{model}}/centers/{{center}}/metrics.tsv",
    log:
        f"{RESULTS}/logs/evaluate/{{modality}}/{{model}}/{{center}}.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
    shell:
        "python -m workflow_scripts.evaluate --cases {input.cases} --pred {input.masks} --model {wildcards.model} "
        "--out {output} > {log} 2>&1"

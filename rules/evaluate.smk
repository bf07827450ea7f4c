# Per-case metrics, one table per modality x model x center.


rule evaluate_center:
    input:
        cases=center_cases,
        masks=center_masks,
        labels=center_label_files,
    output:
        path("metrics"),
    log:
        f"{RESULTS}/logs/evaluate/{{modality}}/{{model}}/{{center}}.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
    params:
        setting=setting_of_center,
        n_folds=config["folds"],
        nsd_tolerance=config["metrics"]["nsd_tolerance_mm"],
        bundle=released_bundle_option,
    shell:
        "python -m workflow_scripts.evaluate --cases {input.cases:q} --pred {input.masks:q} --model {wildcards.model:q} "
        "--setting {params.setting:q} --n-folds {params.n_folds:q} --nsd-tolerance-mm {params.nsd_tolerance:q} "
        "{params.bundle} --out {output:q} > {log:q} 2>&1"


use rule evaluate_center as evaluate_loco with:
    input:
        cases=center_cases,
        masks=path("masks", kind="loco_masks"),
        labels=center_label_files,
    output:
        path("loco_metrics"),
    log:
        f"{RESULTS}/logs/evaluate_loco/{{modality}}/{{model}}/{{center}}.log",
    params:
        setting="loco",
        n_folds=config["folds"],
        nsd_tolerance=config["metrics"]["nsd_tolerance_mm"],
        bundle="",

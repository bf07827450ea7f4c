# Per-center predictions: out-of-fold masks for training centers, fold ensemble for external ones.


# Collecting out-of-fold masks copies files: no cluster job.
localrules:
    collect_cv_masks,
    collect_loco_masks,


rule collect_cv_masks:
    """Each training-center case's prediction from the fold that held it out (no training needed)."""
    input:
        cases=center_cases,
        validation=fold_validations,
    output:
        directory(f"{RESULTS}/{{modality}}/{{model}}/centers/{{center}}/cv_masks"),
    log:
        f"{RESULTS}/logs/collect_cv_masks/{{modality}}/{{model}}/{{center}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.oof --cases {input.cases} --validation {input.validation} --out {output} "
        "> {log} 2>&1"


rule predict_external:
    """An external center's scans segmented by the 5-fold ensemble, in one job per center."""
    input:
        cases=center_cases,
        checkpoints=fold_checkpoints,
    output:
        directory(f"{RESULTS}/{{modality}}/{{model}}/centers/{{center}}/ensemble_masks"),
    log:
        f"{RESULTS}/logs/predict/{{modality}}/{{model}}/{{center}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{modality}}/{{model}}/{{center}}.tsv"
    conda:
        "../envs/nnunet.yaml"
    threads: res("predict", "threads")
    resources:
        mem_mb=res("predict", "mem_mb"),
        runtime=res("predict", "runtime"),
        gpu=res("predict", "gpu"),
    params:
        model_folder=model_folder,
        trainer=model_param("trainer"),
        configuration=model_param("configuration"),
        mirroring=MIRRORING_FLAG,
        step=config["inference"]["step_size"],
        device=config["inference"]["device"],
    shell:
        "python -m workflow_scripts.predict --cases {input.cases} --model-folder {params.model_folder} "
        "--checkpoints {input.checkpoints} --trainer {params.trainer} --configuration {params.configuration} "
        "--out {output} {params.mirroring} --step-size {params.step} --device {params.device} "
        "--threads {threads} > {log} 2>&1"


use rule collect_cv_masks as collect_loco_masks with:
    input:
        cases=center_cases,
        validation=loco_validation,
    output:
        directory(f"{RESULTS}/{{modality}}/{{model}}/centers/{{center}}/loco_masks"),
    log:
        f"{RESULTS}/logs/collect_loco_masks/{{modality}}/{{model}}/{{center}}.log",

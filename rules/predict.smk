# Prediction, its own step: training jobs never predict, so an inference setting (inference.*)
# re-runs every prediction of the affected models and no training. A prediction re-runs when its
# model or its scans change: the images are inputs, the case tables only ancient() ones (a table
# rewritten after a label fix must not re-predict; a new case is a new image input).
#   predict_oof       one job per modality x model x fold: the cases the fold held out, by its checkpoint
#   collect_cv_masks  a training center's out-of-fold masks, gathered from the folds
#   predict_external  one job per external center: the fold ensemble
#   predict_loco      one job per held-out center: the model trained without it


# Collecting out-of-fold masks copies files: no cluster job.
localrules:
    collect_cv_masks,


rule predict_oof:
    """The cases fold {fold} held out, segmented by that fold's checkpoint (its out-of-fold predictions)."""
    input:
        checkpoint=fold_checkpoint,
        splits=ancient(path("splits_json")),
        cases=ancient_train_center_tables,
    output:
        directory(path("oof")),
    log:
        f"{RESULTS}/logs/predict_oof/{{modality}}/{{model}}/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_oof/{{modality}}/{{model}}/fold_{{fold}}.tsv"
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
        inference=inference_params(),
        mirroring=MIRRORING_FLAG,
    shell:
        "python -m workflow_scripts.predict --cases {input.cases:q} --splits {input.splits:q} --fold {wildcards.fold:q} "
        "--model-folder {params.model_folder:q} --checkpoints {input.checkpoint:q} --trainer {params.trainer:q} "
        "--configuration {params.configuration:q} --out {output:q} {params.mirroring:q} "
        "--step-size {params.inference[step_size]:q} --device {params.inference[device]:q} --threads {threads} "
        "> {log:q} 2>&1"


rule collect_cv_masks:
    """Each training-center case's prediction from the fold that held it out."""
    input:
        cases=center_cases,
        oof=fold_oof_dirs,
    output:
        directory(path("masks", kind="cv_masks")),
    log:
        f"{RESULTS}/logs/collect_cv_masks/{{modality}}/{{model}}/{{center}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.oof --cases {input.cases:q} --validation {input.oof:q} --out {output:q} "
        "> {log:q} 2>&1"


rule predict_external:
    """An external center's scans segmented by the fold ensemble, in one job per center."""
    input:
        cases=ancient_center_cases,
        images=center_image_files,
        checkpoints=fold_checkpoints,
    output:
        directory(path("masks", kind="ensemble_masks")),
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
        inference=inference_params(),
        mirroring=MIRRORING_FLAG,
    shell:
        "python -m workflow_scripts.predict --cases {input.cases:q} --model-folder {params.model_folder:q} "
        "--checkpoints {input.checkpoints:q} --trainer {params.trainer:q} --configuration {params.configuration:q} "
        "--out {output:q} {params.mirroring:q} --step-size {params.inference[step_size]:q} "
        "--device {params.inference[device]:q} --threads {threads} > {log:q} 2>&1"


use rule predict_external as predict_loco with:
    input:
        cases=ancient_center_cases,
        images=center_image_files,
        checkpoints=loco_checkpoint,
    output:
        directory(path("masks", kind="loco_masks")),
    log:
        f"{RESULTS}/logs/predict_loco/{{modality}}/{{model}}/{{center}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_loco/{{modality}}/{{model}}/{{center}}.tsv"
    params:
        model_folder=loco_model_folder,
        trainer=model_param("trainer"),
        configuration=model_param("configuration"),
        inference=inference_params(),
        mirroring=MIRRORING_FLAG,


# ---- models that only predict (model_catalog kinds `bundle` and `prompt`; docs/models.md) ----------


rule predict_released:
    """Published weights (a bundle per modality, e.g. imported nnU-Net v1 models) on one center's scans."""
    input:
        cases=ancient_center_cases,
        images=center_image_files,
        bundle=released_bundle,
    output:
        directory(path("masks", kind="released_masks")),
    log:
        f"{RESULTS}/logs/predict_released/{{modality}}/{{model}}/{{center}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_released/{{modality}}/{{model}}/{{center}}.tsv"
    conda:
        "../envs/nnunet.yaml"
    threads: res("predict", "threads")
    resources:
        mem_mb=res("predict", "mem_mb"),
        runtime=res("predict", "runtime"),
        gpu=res("predict", "gpu"),
    params:
        inference=inference_params(),
        mirroring=MIRRORING_FLAG,
    shell:
        "python -m workflow_scripts.bundle predict --bundle {input.bundle:q} --cases {input.cases:q} --out {output:q} "
        "{params.mirroring:q} --step-size {params.inference[step_size]:q} --device {params.inference[device]:q} "
        "--threads {threads} > {log:q} 2>&1"


rule predict_prompted:
    """SAM / MedSAM given the reference label's 3-D box on one center's scans: the reference labels are
    inputs (a fixed label re-predicts), and the setting says so (`prompted`)."""
    input:
        cases=ancient_center_cases,
        images=center_image_files,
        labels=center_label_files,
        checkpoint=prompt_checkpoint,
    output:
        directory(path("masks", kind="prompted_masks")),
    log:
        f"{RESULTS}/logs/predict_prompted/{{modality}}/{{model}}/{{center}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_prompted/{{modality}}/{{model}}/{{center}}.tsv"
    conda:
        "../envs/sam.yaml"
    threads: res("predict", "threads")
    resources:
        mem_mb=res("predict", "mem_mb"),
        runtime=res("predict", "runtime"),
        gpu=res("predict", "gpu"),
    params:
        python=prompted_python(),
        method=prompt_param("method"),
        model_type=prompt_param("model_type"),
        device=config["inference"]["device"],
    shell:
        "{params.python:q} -m workflow_scripts.prompted --cases {input.cases:q} --method {params.method:q} "
        "--model-type {params.model_type:q} --checkpoint {input.checkpoint:q} --out {output:q} "
        "--device {params.device:q} --threads {threads} > {log:q} 2>&1"

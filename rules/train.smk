# Training: one job per modality x model x fold (k-fold CV) and per held-out center (leave one
# center out). A training job trains and nothing else (prediction is rules/predict.smk).
#
# Labs run these jobs for weeks: a job must re-run only when what it learns changes. So
# - its only param is the training recipe (rules/common.smk: training_recipe; workflow_scripts/nnunet/recipe.py);
# - its inputs are the scans it trains on (an edited image or label re-trains), and the derived data
#   (preprocessed arrays, splits) as ancient(): re-running those steps (a workflow upgrade, a new
#   center elsewhere) does not re-train by itself; a change in what they produce is in the recipe;
# - its shell command is frozen (tests/test_upgrade.py): changing it would re-train every finished
#   fold of every lab that pulls the change.
# Execution settings (device, threads, memory, runtime) are resources, never params.


rule train:
    input:
        preprocessed=ancient(path("preprocessed")),
        splits=ancient(path("splits_json")),
        scans=train_center_files,
    output:
        checkpoint=path("fold_file", file="checkpoint_final.pth"),
        info=path("fold_file", file="train_info.json"),
        curve=path("fold_file", file="training_curve.tsv"),
    log:
        f"{RESULTS}/logs/train/{{modality}}/{{model}}/{{run}}/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{modality}}/{{model}}/{{run}}/fold_{{fold}}.tsv"
    conda:
        "../envs/nnunet.yaml"
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
        device=config["training"]["device"],
    params:
        recipe=cv_training_recipe,
    shell:
        "python -m workflow_scripts.train --recipe {params.recipe:q} --preprocessed-root {input.preprocessed:q} "
        "--splits {input.splits:q} --checkpoint {output.checkpoint:q} --device {resources.device} "
        "--threads {threads} > {log:q} 2>&1"


rule train_loco:
    """The model that leaves {center} out: all other training centers, with their own plan and preprocessing."""
    input:
        preprocessed=ancient(f"{DATA}/nnunet_preprocessed_loco/{{modality}}/{{center}}"),
        scans=loco_train_files,
    output:
        checkpoint=path("loco_fold_file", file="checkpoint_final.pth"),
        info=path("loco_fold_file", file="train_info.json"),
        curve=path("loco_fold_file", file="training_curve.tsv"),
    log:
        f"{RESULTS}/logs/train_loco/{{modality}}/{{model}}/{{center}}/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_loco/{{modality}}/{{model}}/{{center}}/{{run}}.tsv"
    conda:
        "../envs/nnunet.yaml"
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
        device=config["training"]["device"],
    params:
        recipe=loco_training_recipe,
    shell:
        "python -m workflow_scripts.train --recipe {params.recipe:q} --preprocessed-root {input.preprocessed:q} "
        "--checkpoint {output.checkpoint:q} --device {resources.device} --threads {threads} > {log:q} 2>&1"

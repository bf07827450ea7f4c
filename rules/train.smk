# One job per modality x model x fold; resumes from checkpoint_latest.pth after an interruption.


rule train:
    input:
        raw=f"{DATA}/nnunet_raw/{{modality}}",
        preprocessed=f"{DATA}/nnunet_preprocessed/{{modality}}",
        splits=f"{DATA}/splits/{{modality}}.json",
    output:
        checkpoint=f"{RESULTS}/{{modality}}/{{model}}/{{run}}/fold_{{fold}}/checkpoint_final.pth",
        info=f"{RESULTS}/{{modality}}/{{model}}/{{run}}/fold_{{fold}}/train_info.json",
        curve=f"{RESULTS}/{{modality}}/{{model}}/{{run}}/fold_{{fold}}/training_curve.tsv",
        validation=directory(f"{RESULTS}/{{modality}}/{{model}}/{{run}}/fold_{{fold}}/validation"),
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
    params:
        dataset_id=modality_param("dataset_id"),
        trainer=model_param("trainer"),
        configuration=model_param("configuration"),
        network=model_network_json,
        results=checked_results_root,
        t=training_params(),
        mirroring=MIRRORING_FLAG,
    shell:
        "python -m workflow_scripts.train --preprocessed-root {input.preprocessed} --raw-root {input.raw} "
        "--results-root {params.results} "
        "--dataset-id {params.dataset_id} --modality {wildcards.modality} --trainer {params.trainer} "
        "--configuration {params.configuration} --network '{params.network}' --fold {wildcards.fold} --splits {input.splits} "
        "--epochs {params.t[epochs]} --iterations {params.t[iterations_per_epoch]} "
        "--val-iterations {params.t[val_iterations_per_epoch]} --lr {params.t[initial_lr]} "
        "--optimizer {params.t[optimizer]} --save-every {params.t[save_every]} --seed {params.t[seed]} "
        "--device {params.t[device]} {params.mirroring} --threads {threads} > {log} 2>&1"


use rule train as train_loco with:
    input:
        raw=f"{DATA}/nnunet_raw/{{modality}}",
        preprocessed=f"{DATA}/nnunet_preprocessed/{{modality}}",
        splits=f"{DATA}/splits/{{modality}}_loco.json",
    output:
        checkpoint=f"{RESULTS}/{{modality}}/{{model}}/loco/{{run}}/fold_{{fold}}/checkpoint_final.pth",
        info=f"{RESULTS}/{{modality}}/{{model}}/loco/{{run}}/fold_{{fold}}/train_info.json",
        curve=f"{RESULTS}/{{modality}}/{{model}}/loco/{{run}}/fold_{{fold}}/training_curve.tsv",
        validation=directory(f"{RESULTS}/{{modality}}/{{model}}/loco/{{run}}/fold_{{fold}}/validation"),
    log:
        f"{RESULTS}/logs/train_loco/{{modality}}/{{model}}/{{run}}/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_loco/{{modality}}/{{model}}/{{run}}/fold_{{fold}}.tsv"
    params:
        dataset_id=modality_param("dataset_id"),
        trainer=model_param("trainer"),
        configuration=model_param("configuration"),
        network=model_network_json,
        results=checked_loco_results_root,
        t=training_params(),
        mirroring=MIRRORING_FLAG,

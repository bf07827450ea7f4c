# One portable model bundle per modality x model: plans, dataset description, fingerprint, fold
# checkpoints, trainer and configuration, versions and a sha256 manifest (docs/segment.md).


# Packing files into a tar: seconds of work, run where Snakemake runs (no cluster job).
localrules:
    export_bundle,


rule export_bundle:
    input:
        checkpoints=fold_checkpoints,
    output:
        bundle_path("{modality}", "{model}"),
    log:
        f"{RESULTS}/logs/bundle/{{modality}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/bundle/{{modality}}/{{model}}.tsv"
    conda:
        "../envs/nnunet.yaml"
    params:
        model_folder=model_folder,
        trainer=model_param("trainer"),
        configuration=model_param("configuration"),
        mirroring=MIRRORING_FLAG,
        step=config["inference"]["step_size"],
    shell:
        "python -m workflow_scripts.bundle export --model-folder {params.model_folder} "
        "--checkpoints {input.checkpoints} --trainer {params.trainer} --configuration {params.configuration} "
        "--modality {wildcards.modality} --model {wildcards.model} {params.mirroring} --step-size {params.step} "
        "--out {output} > {log} 2>&1"

# One portable model bundle per modality x model: plans, dataset description, fingerprint, fold
# checkpoints, trainer and configuration, versions and a sha256 manifest (docs/segment.md).


# Packing files into a tar (and converting v1 weights): seconds of work, run where Snakemake runs (no cluster job).
localrules:
    export_bundle,
    import_v1,
    import_v1_all,


rule export_bundle:
    input:
        checkpoints=fold_checkpoints,
    output:
        path("bundle"),
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
        "python -m workflow_scripts.bundle export --model-folder {params.model_folder:q} "
        "--checkpoints {input.checkpoints:q} --trainer {params.trainer:q} --configuration {params.configuration:q} "
        "--modality {wildcards.modality:q} --model {wildcards.model:q} {params.mirroring:q} --step-size {params.step:q} "
        "--out {output:q} > {log:q} 2>&1"


# A trained nnU-Net v1 model (e.g. the authors' released PanSegNet weights) as a bundle with v1's
# inference semantics; a model_catalog entry names <results>/imported/<name>.tar as its bundle.
rule import_v1:
    input:
        v1_import_files,
    output:
        path("imported"),
    log:
        f"{RESULTS}/logs/imported/{{v1_import}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/imported/{{v1_import}}.tsv"
    wildcard_constraints:
        v1_import=v1_import_regex(),
    conda:
        "../envs/nnunet.yaml"
    params:
        options=v1_import_options,
    shell:
        "python -m workflow_scripts.bundle import-v1 {params.options} --out {output:q} > {log:q} 2>&1"


rule import_v1_all:
    input:
        imported_bundles(),

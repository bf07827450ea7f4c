# nnU-Net v2 fingerprint, plan and preprocess, per modality (and per held-out center: a model that
# leaves a center out gets a fingerprint, plan and preprocessing that never saw that center).
# Training reads this output as ancient(): a checkpoint, so that Snakemake looks again at what
# depends on it once it is re-made, and update(): the previous data stays in place (and comes back
# if the job fails) until the new data replaces it whole, so nothing sees it missing meanwhile.


checkpoint preprocess:
    input:
        path("nnunet_raw"),
    output:
        update(directory(path("preprocessed"))),
    log:
        f"{DATA}/logs/preprocess_{{modality}}.log",
    benchmark:
        f"{DATA}/benchmarks/preprocess_{{modality}}.tsv"
    conda:
        "../envs/nnunet.yaml"
    threads: res("preprocess", "threads")
    resources:
        mem_mb=res("preprocess", "mem_mb"),
        runtime=res("preprocess", "runtime"),
    params:
        dataset_id=modality_param("dataset_id"),
        configurations=nnunet_configurations,
        overrides=plan_json(),
        spacing=target_spacing_arg(),
        planner=config["plan"]["planner"],
        plans=PLANS,
    shell:
        "python -m workflow_scripts.preprocess --raw-root {input:q} --preprocessed-root {output:q} "
        "--dataset-id {params.dataset_id:q} --modality {wildcards.modality:q} --configurations {params.configurations:q} "
        "--overrides {params.overrides:q} {params.spacing} --planner {params.planner:q} --plans-name {params.plans:q} "
        "--threads {threads} > {log:q} 2>&1"


use rule preprocess as preprocess_loco with:
    input:
        path("nnunet_raw_loco"),
    output:
        update(directory(path("preprocessed_loco"))),
    log:
        f"{DATA}/logs/preprocess_loco_{{modality}}_{{center}}.log",
    benchmark:
        f"{DATA}/benchmarks/preprocess_loco_{{modality}}_{{center}}.tsv"

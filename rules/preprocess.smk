# nnU-Net v2 fingerprint, plan and preprocess, per modality.


rule preprocess:
    input:
        f"{DATA}/nnunet_raw/{{modality}}",
    output:
        directory(f"{DATA}/nnunet_preprocessed/{{modality}}"),
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
    shell:
        "python -m workflow_scripts.preprocess --raw-root {input} --preprocessed-root {output} "
        "--dataset-id {params.dataset_id} --modality {wildcards.modality} --configurations {params.configurations} "
        "--overrides '{params.overrides}' {params.spacing} --planner {params.planner} --threads {threads} > {log} 2>&1"

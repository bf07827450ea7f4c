# Raw files -> validated per-center manifest rows -> manifest, nnU-Net raw dataset and folds.


# Tables, links and folds: seconds of work, run where Snakemake runs (no cluster job).
localrules:
    manifest,
    nnunet_raw,
    split,
    nnunet_raw_loco,


checkpoint prepare_center:
    """Validate one center's scans (one job per modality x center: a new center touches only itself).

    A checkpoint: later rules list the files named in its table as their inputs. Its own inputs are
    every file of the center in its source (kept and excluded alike), so fixing one re-runs it.
    """
    input:
        raw=raw_for_center,
        files=center_source_files,
    output:
        cases=update(path("center_table")),
        excluded=update(path("center_excluded")),
    log:
        f"{DATA}/logs/prepare_{{modality}}_{{center}}.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=res("prepare", "mem_mb"),
        runtime=res("prepare", "runtime"),
    params:
        folder=modality_param("folder"),
        mapping=mapping_arg,
        regex=modality_param("participant_regex"),
        role=role_of_center,
        source=data_source_of_center,
        on_bad=config["prepare"]["on_bad_case"],
        header=config["prepare"]["label_header_mismatch"],
        fixed=f"{DATA}/prepared/{{modality}}/fixed_labels",
    shell:
        "python -m workflow_scripts.prepare --raw {input.raw:q}/{params.folder:q} --modality {wildcards.modality:q} "
        "--center {wildcards.center:q} --role {params.role:q} --out {output.cases:q} --fixed-dir {params.fixed:q} "
        "{params.mapping} --participant-regex {params.regex:q} --on-bad-case {params.on_bad:q} "
        "--label-header-mismatch {params.header:q} --data-source {params.source:q} > {log:q} 2>&1"


rule manifest:
    """The study's one table: every scan of every modality and center (schema-validated)."""
    input:
        all_center_tables,
    output:
        manifest=manifest_file(),
        excluded=path("excluded"),
    log:
        f"{DATA}/logs/manifest.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.manifest --tables {input:q} "
        "--out {output.manifest:q} --excluded {output.excluded:q} > {log:q} 2>&1"


rule nnunet_raw:
    """One modality's nnU-Net raw dataset from its training centers (links, not copies)."""
    input:
        tables=train_center_tables,
        files=train_center_files,
    output:
        directory(path("nnunet_raw")),
    log:
        f"{DATA}/logs/nnunet_raw_{{modality}}.log",
    conda:
        "../envs/data.yaml"
    params:
        dataset_id=modality_param("dataset_id"),
        description=data_source_of_modality,
    shell:
        "python -m workflow_scripts.nnunet_dataset --cases {input.tables:q} --out-root {output:q} "
        "--dataset-id {params.dataset_id:q} --modality {wildcards.modality:q} "
        "--data-kind {params.description:q} > {log:q} 2>&1"


checkpoint split:
    """Folds grouped by participant, balanced by center, stable for identical inputs."""
    input:
        train_center_tables,
    output:
        json=update(path("splits_json")),
        tsv=update(path("splits_tsv")),
    log:
        f"{DATA}/logs/split_{{modality}}.log",
    conda:
        "../envs/data.yaml"
    params:
        folds=config["folds"],
        seed=config["split_seed"],
    shell:
        "python -m workflow_scripts.splits --cases {input:q} --folds {params.folds:q} --seed {params.seed:q} "
        "--out-json {output.json:q} --out-tsv {output.tsv:q} > {log:q} 2>&1"


use rule nnunet_raw as nnunet_raw_loco with:
    input:
        tables=loco_train_center_tables,
        files=loco_train_files,
    output:
        directory(path("nnunet_raw_loco")),
    log:
        f"{DATA}/logs/nnunet_raw_loco_{{modality}}_{{center}}.log",

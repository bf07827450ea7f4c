# Sources of raw scans -> data/raw/<source>/ in the PanSegData raw layout.
# Every rule builds data/raw/{source}; each takes only the source names of its own type
# (wildcard_constraints from rules/common.smk). They are checkpoints: once a source is built, the
# files of each center in it become inputs of that center's prepare_center job (the inventory,
# workflow_scripts/data/inventory.py), so fixing, adding or removing any file re-runs it. Downloaded files are cached in
# <downloads_dir>/<source>/ (default data/downloads), outside the rule's output, so an
# interrupted download resumes on the next run and a re-run job downloads nothing.


# Downloads need the internet, which cluster compute nodes often lack: run them where
# Snakemake itself runs.
localrules:
    osf_source,
    url_source,


checkpoint synthetic_source:
    """The embedded SYNTHETIC demo study (no patient data; labelled synthetic everywhere)."""
    output:
        directory(path("raw")),
    log:
        f"{DATA}/logs/source_{{source}}.log",
    wildcard_constraints:
        source=sources_of_type("synthetic"),
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=res("sources", "mem_mb"),
        runtime=res("sources", "runtime"),
    params:
        modalities=source_param("modalities"),
        centers=source_param("centers"),
        cases=source_param("cases_per_center"),
        seed=source_param("seed"),
    shell:
        "python -m workflow_scripts.synthetic --out {output:q} --modalities {params.modalities:q} "
        "--centers {params.centers:q} --cases-per-center {params.cases:q} --seed {params.seed:q} > {log:q} 2>&1"


checkpoint osf_source:
    """Files of an OSF node (PanSegData: t1.zip, t2.zip, name mappings, LICENSE.txt), verified and extracted."""
    output:
        directory(path("raw")),
    log:
        f"{DATA}/logs/source_{{source}}.log",
    wildcard_constraints:
        source=sources_of_type("osf"),
    conda:
        "../envs/data.yaml"
    params:
        settings=source_settings,
        downloads=download_cache,
    shell:
        "python -m workflow_scripts.sources.osf --name {wildcards.source:q} --out {output:q} "
        "--downloads {params.downloads:q} --settings {params.settings} > {log:q} 2>&1"


checkpoint url_source:
    """One archive with a pinned checksum (e.g. the Decathlon's Task07_Pancreas.tar), imported."""
    output:
        directory(path("raw")),
    log:
        f"{DATA}/logs/source_{{source}}.log",
    wildcard_constraints:
        source=sources_of_type("url"),
    conda:
        "../envs/data.yaml"
    params:
        settings=source_settings,
        downloads=download_cache,
    shell:
        "python -m workflow_scripts.sources.url --name {wildcards.source:q} --out {output:q} "
        "--downloads {params.downloads:q} --settings {params.settings} > {log:q} 2>&1"


checkpoint local_source:
    """A folder the user has (nnU-Net raw, Decathlon or PanSegData layout; e.g. converted NIH Pancreas-CT).

    Its inputs are the folder and every file in it: a file fixed, added or removed re-imports it.
    """
    input:
        local_source_files,
    output:
        directory(path("raw")),
    log:
        f"{DATA}/logs/source_{{source}}.log",
    wildcard_constraints:
        source=sources_of_type("local"),
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=res("sources", "mem_mb"),
        runtime=res("sources", "runtime"),
    params:
        settings=source_settings,
    shell:
        "python -m workflow_scripts.sources.local --name {wildcards.source:q} --out {output:q} "
        "--settings {params.settings} > {log:q} 2>&1"

# Figures, paper tables and provenance: what `snakemake --report results/report.html` shows.


# Figures, tables and versions: seconds of work, run where Snakemake runs (no cluster job).
localrules:
    figures_metrics,
    figure_training,
    figure_overlays,
    paper_tables,
    versions,
    loco_table,


rule figures_metrics:
    """Dice/HD95 box plots per model and per center, volume scatter and Bland-Altman plots of one modality."""
    input:
        metrics=modality_metrics,
    output:
        by_model=figure_output(
            figure_stem("{modality}", "dice_hd95_by_model"),
            "../report/fig_dice_hd95_by_model.rst",
            {"figure": "Dice and HD95 per model"},
        ),
        by_center=figure_output(
            figure_stem("{modality}", "dice_hd95_by_center"),
            "../report/fig_dice_hd95_by_center.rst",
            {"figure": "Dice and HD95 per center"},
        ),
        volume=figure_output(
            figure_stem("{modality}", "volume_scatter"),
            "../report/fig_volume_scatter.rst",
            {"figure": "Volume: predicted vs reference"},
        ),
        bland_altman=figure_output(
            figure_stem("{modality}", "bland_altman"),
            "../report/fig_bland_altman.rst",
            {"figure": "Volume: Bland-Altman"},
        ),
    log:
        f"{RESULTS}/logs/figures/{{modality}}/metrics.log",
    conda:
        "../envs/analysis.yaml"
    params:
        out_dir=output_dir,
        reference=REFERENCE_MODEL,
        source=data_source_of_modality,
    shell:
        "python -m workflow_scripts.figures metrics --metrics {input.metrics:q} --reference {params.reference:q} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"


rule figure_training:
    """Training and validation loss and pseudo-Dice per epoch, a line per fold."""
    input:
        fold_curves,
    output:
        figure_output(
            figure_stem("{modality}", "training_curves", "{model}"),
            "../report/fig_training_curves.rst",
            {"figure": "Training curves {model}"},
        ),
    log:
        f"{RESULTS}/logs/figures/{{modality}}/{{model}}/training_curves.log",
    conda:
        "../envs/analysis.yaml"
    params:
        stem=output_stem,
        source=data_source_of_modality,
        title=lambda w: f"{w.modality} {w.model}: training curves per fold",
    shell:
        "python -m workflow_scripts.figures training --curves {input:q} --data-source {params.source:q} "
        "--title {params.title:q} --out {params.stem:q} > {log:q} 2>&1"


rule figure_overlays:
    """Reference and predicted contours on the best, median and worst case by Dice."""
    input:
        metrics=model_metrics,
        cases=modality_center_tables,
        masks=model_mask_dirs,
    output:
        figure_output(
            figure_stem("{modality}", "overlays", "{model}"),
            "../report/fig_overlays.rst",
            {"figure": "Overlays {model}: best, median, worst"},
        ),
    log:
        f"{RESULTS}/logs/figures/{{modality}}/{{model}}/overlays.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/{{modality}}/{{model}}/overlays.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        stem=output_stem,
        source=data_source_of_modality,
    shell:
        "python -m workflow_scripts.figures overlays --metrics {input.metrics:q} --cases {input.cases:q} "
        "--masks {input.masks:q} --out {params.stem:q} > {log:q} 2>&1"


rule paper_tables:
    """The paper's tables (CSV, Markdown, LaTeX, HTML), per setting, from the statistics jobs."""
    input:
        metrics=metrics_all,
        comparisons=stats_files_all("comparisons"),
        cross_setting=stats_files_all("cross_setting"),
        failures=stats_files_all("failures"),
        volume=stats_files_all("volume"),
        descriptives=stats_files_all("descriptives"),
        mixed_model=stats_files_all("mixed_model"),
        agreement=stats_files_all("agreement"),
    output:
        modality=modality_table_outputs("../report/table_modality.rst"),
        cross_center=table_output("cross_center", "../report/table_cross_center.rst", {"table": "Results per center"}),
        agreement=table_output("agreement", "../report/table_agreement.rst", {"table": "Rater agreement (kappa)"}),
        paired=table_output("paired_tests", "../report/table_paired_tests.rst", {"table": "Paired tests"}),
        cross_setting=table_output(
            "cross_setting", "../report/table_cross_setting.rst", {"table": "Comparisons across settings"}
        ),
        failures=table_output("failures", "../report/table_failures.rst", {"table": "Failures (McNemar)"}),
        mixed_model=table_output("mixed_model", "../report/table_mixed_model.rst", {"table": "Mixed models"}),
        volume=table_output("volume_agreement", "../report/table_volume_agreement.rst", {"table": "Volume agreement"}),
    log:
        f"{RESULTS}/logs/paper_tables.log",
    conda:
        "../envs/analysis.yaml"
    params:
        out_dir=output_dir,
        reference=REFERENCE_MODEL,
        models=MODELS,
        modalities=MODALITIES,
        study=config["study"],
        source=data_sources_all(),
        unit=config["statistics"]["unit"],
        n_boot=config["statistics"]["n_boot"],
        seed=config["statistics"]["seed"],
        grouping=participant_grouping_note(),
        labels=model_labels_json(),
    shell:
        "python -m workflow_scripts.paper_tables --metrics {input.metrics:q} --comparisons {input.comparisons:q} "
        "--cross-setting {input.cross_setting:q} --failures {input.failures:q} --volume {input.volume:q} "
        "--descriptives {input.descriptives:q} --mixed-model {input.mixed_model:q} --agreement {input.agreement:q} "
        "--reference {params.reference:q} --models {params.models:q} --modalities {params.modalities:q} "
        "--unit {params.unit:q} --n-boot {params.n_boot:q} --seed {params.seed:q} --study {params.study:q} "
        "--labels {params.labels:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule versions:
    """Software versions, PyTorch/CUDA, git commit and the config's sha256 (re-run on a new commit or config)."""
    output:
        yml=report(path("versions", ext="yml"), caption="../report/versions.rst", category="Provenance"),
        html=report(path("versions", ext="html"), caption="../report/versions.rst", category="Provenance"),
    log:
        f"{RESULTS}/logs/versions.log",
    conda:
        "../envs/nnunet.yaml"
    params:
        config=config_json(),
        commit=GIT_COMMIT,
        repo=workflow.basedir,
    shell:
        "python -m workflow_scripts.versions --config-json {params.config:q} --repo {params.repo:q} "
        "--out {output.yml:q} --html {output.html:q} > {log:q} 2>&1"


rule loco_table:
    """Cross-validation vs leave-one-center-out, per modality x model x training center (from the statistics jobs)."""
    input:
        descriptives=loco_stats_files("descriptives"),
        cross_setting=loco_stats_files("cross_setting"),
    output:
        table_output("loco", "../report/table_loco.rst", {"table": "Cross-center generalisation"}),
    log:
        f"{RESULTS}/logs/loco_table.log",
    conda:
        "../envs/analysis.yaml"
    params:
        out_dir=output_dir,
        study=config["study"],
        source=data_sources_all(),
        unit=config["statistics"]["unit"],
        n_boot=config["statistics"]["n_boot"],
        grouping=participant_grouping_note(),
    shell:
        "python -m workflow_scripts.loco --descriptives {input.descriptives:q} --cross-setting {input.cross_setting:q} "
        "--unit {params.unit:q} --n-boot {params.n_boot:q} --out-dir {params.out_dir:q} --study {params.study:q} > {log:q} 2>&1"

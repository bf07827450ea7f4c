# Study statistics per modality (cheap aggregates): per-setting paired comparisons, cross-setting
# comparisons, failures, volume agreement, mixed models, and rater agreement of the references.


# Per-modality aggregates of small tables (and a few annotated masks): run where Snakemake runs.
localrules:
    paired_stats,
    rater_agreement,


rule paired_stats:
    """Per setting: paired tests vs the reference model (participant unit + scan sensitivity, t and Wilcoxon,
    Holm), cross-setting comparisons, failures (McNemar), volume agreement (ICC, Bland-Altman), descriptives
    and mixed models (center + participant), with stratified cluster bootstrap intervals; one modality."""
    input:
        metrics=modality_metrics,
    output:
        [stats_file("{modality}", name) for name in STATS_TABLES],
    log:
        f"{RESULTS}/logs/stats/{{modality}}/paired_stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/stats/{{modality}}/paired_stats.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        reference=REFERENCE_MODEL,
        models=MODELS,
        options=stats_options(),
        out_dir=output_dir,
    shell:
        "python -m workflow_scripts.stats --metrics {input.metrics:q} --reference {params.reference:q} "
        "--models {params.models:q} {params.options} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule rater_agreement:
    """Voxel-wise Cohen's kappa and Dice between annotations of the same case (manifest's optional columns)."""
    input:
        modality_center_tables,
    output:
        stats_file("{modality}", "agreement"),
    log:
        f"{RESULTS}/logs/stats/{{modality}}/rater_agreement.log",
    benchmark:
        f"{RESULTS}/benchmarks/stats/{{modality}}/rater_agreement.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        margin=config["statistics"]["kappa_box_margin_mm"],
    shell:
        "python -m workflow_scripts.agreement --cases {input:q} --margin-mm {params.margin:q} --out {output:q} > {log:q} 2>&1"

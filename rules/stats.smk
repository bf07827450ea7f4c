# Study statistics per modality (cheap aggregates): paired model comparisons, volume agreement,
# and intra-/inter-rater agreement of the reference annotations.


# Per-modality aggregates of small tables (and a few annotated masks): run where Snakemake runs.
localrules:
    paired_stats,
    rater_agreement,


rule paired_stats:
    """Every model vs the reference model (paired t-tests, Holm) and volume agreement, one modality."""
    input:
        metrics=modality_metrics,
    output:
        comparisons=stats_file("{modality}", "comparisons"),
        volume=stats_file("{modality}", "volume"),
    log:
        f"{RESULTS}/logs/stats/{{modality}}/paired_stats.log",
    conda:
        "../envs/analysis.yaml"
    params:
        reference=REFERENCE_MODEL,
    shell:
        "python -m workflow_scripts.stats --metrics {input.metrics} --reference {params.reference} "
        "--out-comparisons {output.comparisons} --out-volume {output.volume} > {log} 2>&1"


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
        "python -m workflow_scripts.agreement --cases {input} --margin-mm {params.margin} --out {output} > {log} 2>&1"

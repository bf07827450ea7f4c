# PanSeg Workflow: multi-center pancreas segmentation on CT and MRI, raw downloads to paper tables.
# Default config: the embedded SYNTHETIC demo. The study: --configfile config/paper.yaml
from snakemake.utils import min_version, validate

min_version("9.0")


# The demo config is the default; a --configfile (e.g. config/paper.yaml) replaces it whole
# instead of being merged into it, so no demo setting leaks into the study.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "config/schemas/config.schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"


# Rules run `python -m workflow_scripts.<module>`: the package must import in every job, also in
# per-rule conda envs and on cluster nodes, wherever the working directory is. Without conda envs,
# `python` is the interpreter that runs Snakemake (an un-activated .venv/bin/snakemake works).
shell.prefix(job_shell_prefix())


wildcard_constraints:
    modality="|".join(MODALITIES),
    model="|".join(MODELS),
    center="|".join(ALL_CENTERS),
    fold=r"\d+",
    run=rf"Dataset\d{{3}}_[A-Za-z0-9]+/\w+__{re.escape(PLANS)}__(3d_fullres|2d)",
    source="|".join(config["sources"]),
    segment_job=segment_job_regex(),


include: "rules/download.smk"
include: "rules/prepare.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/evaluate.smk"
include: "rules/tables.smk"
include: "rules/stats.smk"
include: "rules/report.smk"
include: "rules/bundle.smk"
include: "rules/segment.smk"


# Before the DAG: finished folds of an earlier workflow version with an unchanged recipe stay trained.
adopt_legacy_training()
adopt_requoted_commands()


rule all:
    default_target: True
    input:
        manifest_file(),
        summary_tables(),
        loco_table_all(),
        paper_tables_all(),
        figures_all(),
        versions_files(),
        all_bundles(),

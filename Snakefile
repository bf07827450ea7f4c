# PanSeg Workflow: multi-center pancreas segmentation on CT and MRI, raw downloads to paper tables.
# Default config: the embedded SYNTHETIC demo. The study: --configfile config/paper.yaml
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/prepare.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/evaluate.smk"
include: "rules/tables.smk"


rule all:
    input:
        manifest_file(),
        summary_tables(),
    default_target: True

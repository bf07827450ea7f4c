# Helpers shared by all rule files (config views, paths, input functions).
import json
import subprocess
from pathlib import Path

DATA = config["data_dir"]
RESULTS = config["results_dir"]
MODALITIES = list(config["modalities"])
MODELS = list(config["models"])
FOLDS = list(range(config["folds"]))


def _check_config():
    """Cross-key checks a JSON schema cannot express; errors name the key."""
    for m, mc in config["modalities"].items():
        if mc["source"] not in config["sources"]:
            raise ValueError(f"modalities.{m}.source: {mc['source']!r} is not a key of sources")
        both = set(mc["train_centers"]) & set(mc["external_centers"])
        if both:
            raise ValueError(f"modalities.{m}: centers {sorted(both)} are both train_centers and external_centers")
    ids = [mc["dataset_id"] for mc in config["modalities"].values()]
    if len(ids) != len(set(ids)):
        raise ValueError(f"modalities.*.dataset_id must differ between modalities, got {ids}")
    for model in MODELS:
        if model not in config["model_catalog"]:
            raise ValueError(f"models: {model!r} is not in model_catalog ({sorted(config['model_catalog'])})")


_check_config()


def _reference_model():
    """statistics.reference_model; unset: pansegnet when configured, else the first model."""
    ref = config["statistics"].get("reference_model")
    if ref is None:
        return "pansegnet" if "pansegnet" in MODELS else MODELS[0]
    if ref not in MODELS:
        raise ValueError(f"statistics.reference_model: {ref!r} is not one of models ({MODELS})")
    return ref


REFERENCE_MODEL = _reference_model()

ALL_CENTERS = sorted({c for mc in config["modalities"].values() for c in mc["train_centers"] + mc["external_centers"]})


def centers(modality, role=None):
    mc = config["modalities"][modality]
    if role == "train-cv":
        return list(mc["train_centers"])
    if role == "external":
        return list(mc["external_centers"])
    return list(mc["train_centers"]) + list(mc["external_centers"])


def center_role(modality, center):
    return "train-cv" if center in config["modalities"][modality]["train_centers"] else "external"


def is_synthetic():
    return any(s["type"] == "synthetic" for s in config["sources"].values())


def data_source_label(modality):
    source = config["modalities"][modality]["source"]
    return "synthetic" if config["sources"][source]["type"] == "synthetic" else source


def nnunet_dataset(modality):
    return f"Dataset{config['modalities'][modality]['dataset_id']:03d}_{modality}"


def model_conf(model):
    return config["model_catalog"][model]


def fold_dir(modality, model, fold):
    """nnU-Net's own output layout under results/<modality>/<model> (nnUNet_results)."""
    m = model_conf(model)
    trainer_class = m["trainer"].partition(":")[2]
    return (
        f"{RESULTS}/{modality}/{model}/{nnunet_dataset(modality)}/"
        f"{trainer_class}__nnUNetPlans__{m['configuration']}/fold_{fold}"
    )


def res(rule_name, key):
    return config["resources"][rule_name][key]


def plan_json():
    # Sorted keys: a config written in another key order must not look like a changed param.
    return json.dumps(config["plan"].get("configurations", {}), separators=(",", ":"), sort_keys=True)


def training_params():
    return dict(sorted(config["training"].items()))


# ---- paths of rule outputs -------------------------------------------------------------
def raw_dir(modality):
    return f"{DATA}/raw/{config['modalities'][modality]['source']}"


def center_table(modality, center):
    return f"{DATA}/prepared/{modality}/{center}.tsv"


def manifest_file():
    return f"{DATA}/manifest.tsv"


def summary_tables():
    return [f"{RESULTS}/tables/summary.csv", f"{RESULTS}/tables/summary.md"]


# ---- statistics, figures, paper tables, provenance (issue 3) -------------------------------
PAPER_TABLE_FORMATS = ["csv", "md", "tex", "html"]
METRIC_FIGURES = ["dice_hd95_by_model", "dice_hd95_by_center", "volume_scatter", "bland_altman"]
FIGURE_FILES = ["png", "svg", "tsv"]


def stats_file(modality, name):
    """name: comparisons, volume or agreement."""
    return f"{RESULTS}/stats/{modality}/{name}.tsv"


def paper_table(name, ext):
    return f"{RESULTS}/tables/{name}.{ext}"


def paper_table_names():
    return [f"modality_{m}" for m in MODALITIES] + ["cross_center", "agreement", "paired_tests", "volume_agreement"]


def paper_tables_all():
    return [paper_table(n, ext) for n in paper_table_names() for ext in PAPER_TABLE_FORMATS]


def figure_stem(modality, name, model=None):
    if model:
        return f"{RESULTS}/figures/{modality}/{model}/{name}"
    return f"{RESULTS}/figures/{modality}/{name}"


def output_dir(wildcards, output):
    """Params function: the folder of the rule's first output."""
    return str(Path(output[0]).parent)


def output_stem(wildcards, output):
    """Params function: the first output (a figure's .png) without its extension."""
    return str(Path(output[0]).with_suffix(""))


def figures_all():
    stems = [figure_stem(m, f) for m in MODALITIES for f in METRIC_FIGURES]
    stems += [figure_stem(m, f, model) for m in MODALITIES for model in MODELS for f in ("training_curves", "overlays")]
    return [f"{stem}.{ext}" for stem in stems for ext in FIGURE_FILES]


def versions_files():
    return [f"{RESULTS}/versions.yml", f"{RESULTS}/versions.html"]


def figure_output(stem, caption, label, category="{modality}", subcategory="Figures"):
    """A figure's files: <stem>.png (shown in the report), .svg and .tsv (the per-case rows it plots)."""
    png = report(f"{stem}.png", caption=caption, category=category, subcategory=subcategory, labels=label)
    return [png, f"{stem}.svg", f"{stem}.tsv"]


def table_output(name, caption, label, category="Tables"):
    """A paper table's files; the HTML one is shown in the report."""
    files = [paper_table(name, ext) for ext in PAPER_TABLE_FORMATS]
    files[PAPER_TABLE_FORMATS.index("html")] = report(
        paper_table(name, "html"), caption=caption, category=category, labels=label
    )
    return files


def modality_table_outputs(caption):
    return [table_output(f"modality_{m}", caption, {"table": f"{m}: results per model"}) for m in MODALITIES]


def config_json():
    """The run's whole config as canonical JSON (versions.yml hashes it)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _git_commit():
    """HEAD of the workflow's checkout (a params value: a new commit refreshes versions.yml)."""
    try:
        out = subprocess.run(
            ["git", "-C", workflow.basedir, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


GIT_COMMIT = _git_commit()


def data_sources_all():
    return ", ".join(sorted({data_source_label(m) for m in MODALITIES}))


# ---- input functions ---------------------------------------------------------------------
def raw_for_modality(wildcards):
    return raw_dir(wildcards.modality)


def train_center_tables(wildcards):
    return [center_table(wildcards.modality, c) for c in centers(wildcards.modality, "train-cv")]


def all_center_tables(wildcards):
    return [center_table(m, c) for m in MODALITIES for c in centers(m)]


def mapping_arg(wildcards):
    mc = config["modalities"][wildcards.modality]
    return f"--mapping {raw_dir(wildcards.modality)}/{mc['mapping']}" if mc["mapping"] else ""


def fold_checkpoints(wildcards):
    return [f"{fold_dir(wildcards.modality, wildcards.model, f)}/checkpoint_final.pth" for f in FOLDS]


def fold_validations(wildcards):
    return [f"{fold_dir(wildcards.modality, wildcards.model, f)}/validation" for f in FOLDS]


def train_checkpoint(wildcards):
    return f"{fold_dir(wildcards.modality, wildcards.model, wildcards.fold)}/checkpoint_final.pth"


def center_masks(wildcards):
    kind = "cv_masks" if center_role(wildcards.modality, wildcards.center) == "train-cv" else "ensemble_masks"
    return f"{RESULTS}/{wildcards.modality}/{wildcards.model}/centers/{wildcards.center}/{kind}"


def center_metrics_all(wildcards=None):
    return [
        f"{RESULTS}/{m}/{model}/centers/{c}/metrics.tsv" for m in MODALITIES for model in MODELS for c in centers(m)
    ]


def modality_metrics(wildcards):
    """Per-center metrics of one modality, every model."""
    m = wildcards.modality
    return [f"{RESULTS}/{m}/{model}/centers/{c}/metrics.tsv" for model in MODELS for c in centers(m)]


def model_metrics(wildcards):
    """Per-center metrics of one modality x model."""
    m = wildcards.modality
    return [f"{RESULTS}/{m}/{wildcards.model}/centers/{c}/metrics.tsv" for c in centers(m)]


def modality_center_tables(wildcards):
    return [center_table(wildcards.modality, c) for c in centers(wildcards.modality)]


def model_mask_dirs(wildcards):
    kinds = {"train-cv": "cv_masks", "external": "ensemble_masks"}
    m = wildcards.modality
    return [f"{RESULTS}/{m}/{wildcards.model}/centers/{c}/{kinds[center_role(m, c)]}" for c in centers(m)]


def fold_curves(wildcards):
    return [f"{fold_dir(wildcards.modality, wildcards.model, f)}/training_curve.tsv" for f in FOLDS]


def stats_files_all(name):
    def get(wildcards):
        return [stats_file(m, name) for m in MODALITIES]

    return get


def source_param(key):
    """Params function: one key of the source named by the {source} wildcard."""

    def get(wildcards):
        return config["sources"][wildcards.source][key]

    return get


def modality_param(key):
    """Params function: one key of the modality named by the {modality} wildcard."""

    def get(wildcards):
        return config["modalities"][wildcards.modality][key]

    return get


def role_of_center(wildcards):
    return center_role(wildcards.modality, wildcards.center)


def data_source_of_modality(wildcards):
    return data_source_label(wildcards.modality)


def model_param(key):
    def get(wildcards):
        return model_conf(wildcards.model)[key]

    return get


def model_folder(wildcards):
    return str(Path(fold_dir(wildcards.modality, wildcards.model, 0)).parent)


def center_cases(wildcards):
    return center_table(wildcards.modality, wildcards.center)


def nnunet_configurations(wildcards=None):
    """The nnU-Net configurations the chosen models need (e.g. 3d_fullres, 2d)."""
    return sorted({model_conf(m)["configuration"] for m in MODELS})


def target_spacing_arg():
    spacing = config["plan"].get("target_spacing")
    return "--target-spacing " + " ".join(str(s) for s in spacing) if spacing else ""


def checked_results_root(wildcards):
    """nnUNet_results of a training job; refuses a {run} folder that is not this model's."""
    expected = fold_dir(wildcards.modality, wildcards.model, wildcards.fold)
    asked = f"{RESULTS}/{wildcards.modality}/{wildcards.model}/{wildcards.run}/fold_{wildcards.fold}"
    if expected != asked:
        raise ValueError(f"{asked}: model {wildcards.model} trains into {expected}")
    return f"{RESULTS}/{wildcards.modality}/{wildcards.model}"

# Helpers shared by all rule files (config views, paths, input functions).
# Shell commands quote every value with Snakemake's `:q`. The exceptions are params that hold a
# ready-made, already quoted piece of command line (built here with shlex: `options`, `mapping`,
# `spacing`, `bundle`, `settings`), which may be empty or several words; they go in as they are.
import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

# The workflow's own package, for helpers that rules and jobs share (e.g. the training recipe).
sys.path.insert(0, workflow.basedir)
from workflow_scripts.common import model_catalog, provenance
from workflow_scripts.data.inventory import center_input_files, folder_files
from workflow_scripts.nnunet import recipe as recipes

# Models: the built-in ones (config/models.yaml) merged with config's model_catalog, key by key.
MODEL_CATALOG = model_catalog.build_catalog(config["model_catalog"])
DATA = config["data_dir"]
# Downloaded files live outside data/raw: Snakemake deletes a job's outputs before it runs and
# after it fails, and a download cache there could not resume.
DOWNLOADS = config["downloads_dir"] or f"{DATA}/downloads"
RESULTS = config["results_dir"]
MODALITIES = list(config["modalities"])
MODELS = list(config["models"])
FOLDS = list(range(config["folds"]))


# ---- paths of the outputs of rules, each defined once -----------------------------------------
# A rule's output: and the input functions that need its files both take the path from here:
# path(name) is the pattern with its {wildcards} (for output:); path(name, modality="T1", ...)
# fills some or all of them in. Renaming a folder is a one-line change here.
PATHS = {
    "raw": f"{DATA}/raw/{{source}}",
    "center_table": f"{DATA}/prepared/{{modality}}/{{center}}.tsv",
    "center_excluded": f"{DATA}/prepared/{{modality}}/{{center}}.excluded.tsv",
    "manifest": f"{DATA}/manifest.tsv",
    "excluded": f"{DATA}/excluded.tsv",
    "nnunet_raw": f"{DATA}/nnunet_raw/{{modality}}",
    "nnunet_raw_loco": f"{DATA}/nnunet_raw_loco/{{modality}}/{{center}}",
    "preprocessed": f"{DATA}/nnunet_preprocessed/{{modality}}",
    "preprocessed_loco": f"{DATA}/nnunet_preprocessed_loco/{{modality}}/{{center}}",
    "splits_json": f"{DATA}/splits/{{modality}}.json",
    "splits_tsv": f"{DATA}/splits/{{modality}}.tsv",
    # nnU-Net's own layout: <model root>/<run>/fold_<k>, run = Dataset<ID>_<M>/<Trainer>__<plans>__<configuration>
    "model_root": f"{RESULTS}/{{modality}}/{{model}}",
    "loco_model_root": f"{RESULTS}/{{modality}}/{{model}}/loco/{{center}}",
    "fold": f"{RESULTS}/{{modality}}/{{model}}/{{run}}/fold_{{fold}}",
    "loco_fold": f"{RESULTS}/{{modality}}/{{model}}/loco/{{center}}/{{run}}/fold_all",
    "oof": f"{RESULTS}/{{modality}}/{{model}}/oof/fold_{{fold}}",
    # kind: cv_masks, ensemble_masks, loco_masks, released_masks, prompted_masks (masks_kind)
    "masks": f"{RESULTS}/{{modality}}/{{model}}/centers/{{center}}/{{kind}}",
    "metrics": f"{RESULTS}/{{modality}}/{{model}}/centers/{{center}}/metrics.tsv",
    "loco_metrics": f"{RESULTS}/{{modality}}/{{model}}/centers/{{center}}/loco_metrics.tsv",
    "bundle": f"{RESULTS}/{{modality}}/{{model}}/bundle/panseg_{{modality}}_{{model}}.tar",
    "imported": f"{RESULTS}/imported/{{v1_import}}.tar",
    "segment": f"{RESULTS}/segment/{{segment_job}}",
    "stats": f"{RESULTS}/stats/{{modality}}/{{name}}.tsv",
    "table": f"{RESULTS}/tables/{{name}}.{{ext}}",
    "per_case": f"{RESULTS}/tables/per_case.tsv",
    "versions": f"{RESULTS}/versions.{{ext}}",
}
# A file in a fold's folder (the training rules' outputs).
PATHS["fold_file"] = str(Path(PATHS["fold"], "{file}"))
PATHS["loco_fold_file"] = str(Path(PATHS["loco_fold"], "{file}"))


def path(key, /, **values):
    """PATHS[key] with the given {wildcards} filled in; the others stay wildcards."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), PATHS[key])


def model_kind(model):
    """'trainable', 'released' (published weights as bundles) or 'prompted' (SAM/MedSAM)."""
    return model_catalog.model_kind(MODEL_CATALOG[model])


def model_setting(model):
    """The per-case setting of a prediction-only model ('released', 'prompted'); None for a trainable
    one, whose setting depends on the center (setting_of_center)."""
    kind = model_kind(model)
    return None if kind == "trainable" else kind


def model_label(model):
    """The row name of a model in tables (model_catalog.<model>.label, else its name)."""
    return MODEL_CATALOG[model].get("label") or model


def model_labels_json():
    """{model: table row name} of every configured model, as one JSON argument for table scripts."""
    return json.dumps({m: model_label(m) for m in MODELS}, sort_keys=True)


def model_has_modality(model, modality):
    """Whether a model predicts this modality: a released model only where it has a bundle."""
    return model_kind(model) != "released" or modality in MODEL_CATALOG[model]["bundle"]


def trainable_models():
    """Models of `models` that are trained here (training, bundle export, leave-one-center-out)."""
    return [m for m in MODELS if model_kind(m) == "trainable"]


def prediction_only_models(modality=None):
    """Models of `models` that only predict (released weights, prompted); with a modality, those that predict it."""
    return [m for m in MODELS if model_kind(m) != "trainable" and (modality is None or model_has_modality(m, modality))]


def models_for(modality):
    """Models of `models` that have jobs for this modality, in config order."""
    return [m for m in MODELS if model_has_modality(m, modality)]


def model_bundle(model, modality):
    """The released-weights bundle of a model for one modality."""
    return MODEL_CATALOG[model]["bundle"][modality]


def model_prompt(model):
    """method, model_type and checkpoint of a prompted model."""
    return MODEL_CATALOG[model]["prompt"]


def released_bundle(wildcards):
    """Input function: the bundle of a released model for the {modality} wildcard."""
    return model_bundle(wildcards.model, wildcards.modality)


def released_bundle_option(wildcards):
    """Params function: `--bundle B.tar` for a released model (its evaluation marks the scans the
    authors' training held out), else nothing."""
    if model_kind(wildcards.model) != "released":
        return ""
    return f"--bundle {shlex.quote(model_bundle(wildcards.model, wildcards.modality))}"


def prompt_checkpoint(wildcards):
    """Input function: the SAM/MedSAM checkpoint file of a prompted model."""
    return model_prompt(wildcards.model)["checkpoint"]


def prompt_param(key):
    """Params function: method or model_type of the prompted model named by {model}."""

    def get(wildcards):
        return model_prompt(wildcards.model)[key]

    return get


def prompted_python():
    """Interpreter of prompted (SAM/MedSAM) jobs: segment-anything needs torchvision, which does not
    import beside .venv's CPU torch. Under --sdm conda the rule's env (envs/sam.yaml) gives `python`;
    else the workflow's .venv-sam (`make sam-env`), if it exists."""
    from snakemake.settings.types import DeploymentMethod

    venv = Path(workflow.basedir) / ".venv-sam" / "bin" / "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method or not venv.exists():
        return "python"
    return str(venv)


def _check_config():
    """Cross-key checks a JSON schema cannot express; errors name the key."""
    for m, mc in config["modalities"].items():
        if mc["source"] not in config["sources"]:
            raise ValueError(f"modalities.{m}.source: {mc['source']!r} is not a key of sources")
        both = set(mc["train_centers"]) & set(mc["external_centers"])
        if both:
            raise ValueError(f"modalities.{m}: centers {sorted(both)} are both train_centers and external_centers")
        for center, source in mc["center_sources"].items():
            if center not in mc["train_centers"] + mc["external_centers"]:
                raise ValueError(f"modalities.{m}.center_sources: {center!r} is not one of the modality's centers")
            if source not in config["sources"]:
                raise ValueError(f"modalities.{m}.center_sources.{center}: {source!r} is not a key of sources")
        for center in mc["train_centers"] + mc["external_centers"]:
            name = mc["center_sources"].get(center, mc["source"])
            renamed = config["sources"][name].get("center")
            if renamed and renamed != center:
                raise ValueError(
                    f"modalities.{m}: center {center} reads source {name!r}, whose cases become center {renamed}; "
                    f"route {center} to its own source with modalities.{m}.center_sources"
                )
    ids = [mc["dataset_id"] for mc in config["modalities"].values()]
    if len(ids) != len(set(ids)):
        raise ValueError(f"modalities.*.dataset_id must differ between modalities, got {ids}")
    for m, mc in config["modalities"].items():
        if mc["leave_one_center_out"] and len(mc["train_centers"]) < 2:
            raise ValueError(f"modalities.{m}.leave_one_center_out needs at least two train_centers")
    for model in MODELS:
        if model not in MODEL_CATALOG:
            raise ValueError(f"models: {model!r} is neither built in nor in model_catalog ({sorted(MODEL_CATALOG)})")
        if "prompt" in MODEL_CATALOG[model]:
            _check_prompt(model, MODEL_CATALOG[model]["prompt"])
    for model in config["loco_models"]:
        if model not in config["models"]:
            raise ValueError(f"loco_models: {model!r} is not in models")
        if model_kind(model) != "trainable":
            raise ValueError(f"loco_models: {model!r} is a {model_kind(model)} model: it is never trained")


def _check_prompt(model, prompt):
    """A prompted model needs its method, model type and an existing checkpoint file (before any job)."""
    key = f"model_catalog.{model}.prompt"
    for field in ("method", "model_type"):
        if not prompt.get(field):
            raise ValueError(f"{key}.{field}: missing (method: sam|medsam, model_type: vit_h|vit_l|vit_b)")
    weights = prompt.get("checkpoint")
    if not weights:
        raise ValueError(
            f"{key}.checkpoint: {model} needs the {prompt['model_type']} checkpoint file of "
            f"{prompt['method'].upper()} (no weights are downloaded): set it in the config"
        )
    if not Path(weights).is_file():
        raise ValueError(f"{key}.checkpoint: {weights}: file does not exist")


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


def _unfilled_site_settings():
    """Placeholders of profiles/slurm (FILL_IN_...) still in --default-resources/--set-resources."""
    settings = workflow.resource_settings
    given = [("default-resources", settings.default_resources)]
    given += [(f"set-resources {rule}", res) for rule, res in dict(settings.overwrite_resources).items()]
    found = []
    for where, res in given:
        if res is None:
            continue
        items = res.args if hasattr(res, "args") else [f"{k}={v}" for k, v in dict(res).items()]
        found += [f"{where}: {item}" for item in items if "FILL_IN_" in str(item)]
    return found


_UNFILLED = _unfilled_site_settings()
if _UNFILLED:
    raise ValueError(
        "profiles/slurm: fill in your cluster's site settings first (docs/cluster.md, 'Site settings'): "
        + "; ".join(_UNFILLED)
    )

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


def center_source(modality, center):
    """The source a center's scans come from: modalities.<m>.center_sources, else the modality's source."""
    mc = config["modalities"][modality]
    return mc["center_sources"].get(center, mc["source"])


def data_source_label(modality, center=None):
    """'synthetic' for the demo, else the source name(s) ('msd+nih' for a modality drawing on two)."""
    names = [center_source(modality, center)] if center else [center_source(modality, c) for c in centers(modality)]
    labels = {"synthetic" if config["sources"][n]["type"] == "synthetic" else n for n in names}
    return "+".join(sorted(labels))


def sources_of_type(kind):
    """Regex for the {source} wildcard of the rule that builds sources of this type (never matches if none)."""
    names = [n for n, s in config["sources"].items() if s["type"] == kind]
    return "|".join(re.escape(n) for n in sorted(names)) if names else "(?!)"


def nnunet_dataset(modality):
    return f"Dataset{config['modalities'][modality]['dataset_id']:03d}_{modality}"


def model_conf(model):
    return MODEL_CATALOG[model]


# The plans nnU-Net's planner writes (plan.plans_name, else the planner's default name).
PLANS = recipes.plans_name(config["plan"]["planner"], config["plan"].get("plans_name"))


def model_root(modality, model, held_out=None):
    """nnUNet_results of one model: results/<modality>/<model> (k-fold CV), or
    results/<modality>/<model>/loco/<center> (the model trained without `held_out`)."""
    if held_out:
        return path("loco_model_root", modality=modality, model=model, center=held_out)
    return path("model_root", modality=modality, model=model)


def run_name(modality, model):
    """The {run} of a trained model: Dataset<ID>_<M>/<Trainer>__<plans>__<configuration> (nnU-Net's layout)."""
    m = model_conf(model)
    if model_kind(model) != "trainable":
        raise ValueError(f"model {model} is a {model_kind(model)} model: it has no training folds")
    trainer_class = m["trainer"].partition(":")[2]
    return f"{nnunet_dataset(modality)}/{trainer_class}__{PLANS}__{m['configuration']}"


def run_dir(modality, model, held_out=None):
    """nnU-Net's trained-model folder: <model root>/<run>."""
    return f"{model_root(modality, model, held_out)}/{run_name(modality, model)}"


def fold_dir(modality, model, fold):
    """One cross-validation fold's folder (nnU-Net's own layout)."""
    return path("fold", modality=modality, model=model, run=run_name(modality, model), fold=fold)


def loco_dir(modality, model, center):
    """The held-out-center model's folder: trained on all training centers but `center` (nnU-Net's fold 'all')."""
    return path("loco_fold", modality=modality, model=model, center=center, run=run_name(modality, model))


def res(rule_name, key):
    return config["resources"][rule_name][key]


def plan_json():
    # Sorted keys: a config written in another key order must not look like a changed param.
    return json.dumps(config["plan"].get("configurations", {}), separators=(",", ":"), sort_keys=True)


# Test-time mirroring as the prediction and bundle commands take it.
MIRRORING_FLAG = "--mirroring" if config["inference"]["mirroring"] else "--no-mirroring"


def _center_rows(modality, center, direct=False):
    """A prepared center table's rows. Through the checkpoint (jobs wait for it), or `direct`ly from
    the file (parse time, where it must exist)."""
    import csv

    table = Path(center_table(modality, center))
    if not direct:
        table = Path(checkpoints.prepare_center.get(modality=modality, center=center).output.cases)
        if not table.exists():
            # Its checkpoint job is running again right now (outputs removed): wait for it.
            from snakemake.exceptions import IncompleteCheckpointException
            from snakemake.io import checkpoint_target

            raise IncompleteCheckpointException(checkpoints.prepare_center.rule, checkpoint_target(str(table)))
    stat = table.stat()
    key = (str(table), stat.st_mtime_ns, stat.st_size)  # a re-written table is read again
    if key not in _CENTER_ROWS:
        with table.open(encoding="utf-8") as f:
            _CENTER_ROWS[key] = list(csv.DictReader(f, delimiter="\t"))
    return _CENTER_ROWS[key]


# Rows of each prepared center table as read: every fold's training recipe needs them (parse time).
_CENTER_ROWS = {}


def _training_cases(modality, held_out=None, direct=False):
    """Rows (case_id, participant_id, center) of a model's training scans, from the prepared tables."""
    return [row for c in centers(modality, "train-cv") if c != held_out for row in _center_rows(modality, c, direct)]


def training_recipe(modality, model, fold=None, held_out=None, direct=False):
    """The training recipe (workflow_scripts/nnunet/recipe.py) of a CV fold or of a held-out-center model."""
    m = model_conf(model)
    recipe = recipes.training_recipe(
        modality=modality,
        dataset_id=config["modalities"][modality]["dataset_id"],
        experiment="loco" if held_out else "cv",
        fold=held_out if held_out else int(fold),
        trainer=m["trainer"],
        configuration=m["configuration"],
        network=m["network"],
        plan=config["plan"],
        plans=PLANS,
        training=config["training"],
        folds=config["folds"],
        split_seed=config["split_seed"],
        cases=recipes.cases_digest(_training_cases(modality, held_out, direct)),
    )
    return recipes.dumps(recipe)


def cv_training_recipe(wildcards):
    return training_recipe(wildcards.modality, wildcards.model, fold=wildcards.fold)


def loco_training_recipe(wildcards):
    return training_recipe(wildcards.modality, wildcards.model, held_out=wildcards.center)


def raw_dir(modality, center=None):
    return path("raw", source=center_source(modality, center))


def center_table(modality, center):
    return path("center_table", modality=modality, center=center)


def manifest_file():
    return path("manifest")


def summary_tables():
    return [path("table", name="summary", ext=ext) for ext in ("csv", "md")]


# ---- statistics, figures, paper tables, provenance -------------------------------------
PAPER_TABLE_FORMATS = ["csv", "md", "tex", "html"]
METRIC_FIGURES = ["dice_hd95_by_model", "dice_hd95_by_center", "volume_scatter", "bland_altman"]
FIGURE_FILES = ["png", "svg", "tsv"]


# Tables of the statistics job of a modality (workflow_scripts.evaluation.stats.OUTPUTS) and of rater agreement.
STATS_TABLES = ["comparisons", "cross_setting", "failures", "volume", "descriptives", "mixed_model"]


def stats_file(modality, name):
    """name: one of STATS_TABLES, or agreement."""
    return path("stats", modality=modality, name=name)


def stats_options():
    """Command-line options of the statistics job (config `statistics`)."""
    st = config["statistics"]
    options = ["--unit", st["unit"], "--n-boot", str(st["n_boot"]), "--seed", str(st["seed"])]
    options += ["--min-pairs", str(st["min_pairs"])]
    if st["failure_dice"] is not None:
        options += ["--failure-dice", str(st["failure_dice"])]
    return shlex.join(options)


def paper_table(name, ext):
    return path("table", name=name, ext=ext)


PAPER_TABLES = [
    "cross_center",
    "agreement",
    "paired_tests",
    "cross_setting",
    "failures",
    "mixed_model",
    "volume_agreement",
]


def paper_table_names():
    return [f"modality_{m}" for m in MODALITIES] + PAPER_TABLES


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
    stems += [figure_stem(m, "training_curves", model) for m in MODALITIES for model in trainable_models()]
    stems += [figure_stem(m, "overlays", model) for m in MODALITIES for model in models_for(m)]
    return [f"{stem}.{ext}" for stem in stems for ext in FIGURE_FILES]


def versions_files():
    return [path("versions", ext=ext) for ext in ("yml", "html")]


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


# a params value of the versions rule: a new commit refreshes versions.yml
GIT_COMMIT = provenance.git_commit(workflow.basedir) or "unknown"


def data_sources_all():
    return ", ".join(sorted({data_source_label(m) for m in MODALITIES}))


# ---- input functions ---------------------------------------------------------------------
def raw_for_center(wildcards):
    """Only this center's source: a new center's source does not re-run other centers' jobs."""
    return raw_dir(wildcards.modality, wildcards.center)


def train_center_tables(wildcards):
    return [center_table(wildcards.modality, c) for c in centers(wildcards.modality, "train-cv")]


def all_center_tables(wildcards):
    return [center_table(m, c) for m in MODALITIES for c in centers(m)]


def mapping_arg(wildcards):
    mc = config["modalities"][wildcards.modality]
    if not mc["mapping"]:
        return ""
    # Quoted: PanSegData keeps its mapping files in "Meta informations" (with a space).
    path = f"{raw_dir(wildcards.modality, wildcards.center)}/{mc['mapping']}"
    return f"--mapping {shlex.quote(path)}"


def fold_checkpoints(wildcards):
    return [f"{fold_dir(wildcards.modality, wildcards.model, f)}/checkpoint_final.pth" for f in FOLDS]


def fold_checkpoint(wildcards):
    return f"{fold_dir(wildcards.modality, wildcards.model, wildcards.fold)}/checkpoint_final.pth"


def loco_checkpoint(wildcards):
    return f"{loco_dir(wildcards.modality, wildcards.model, wildcards.center)}/checkpoint_final.pth"


def oof_dir(modality, model, fold):
    """Out-of-fold masks of one fold: the cases it held out, predicted by its own checkpoint."""
    return path("oof", modality=modality, model=model, fold=fold)


def fold_oof_dirs(wildcards):
    return [oof_dir(wildcards.modality, wildcards.model, f) for f in FOLDS]


def masks_kind(modality, model, center):
    """Folder name of a center's masks: cv_masks / ensemble_masks (trainable), released_masks / prompted_masks."""
    setting = model_setting(model)
    if setting:
        return f"{setting}_masks"
    return "cv_masks" if center_role(modality, center) == "train-cv" else "ensemble_masks"


def center_masks(wildcards):
    kind = masks_kind(wildcards.modality, wildcards.model, wildcards.center)
    return path("masks", modality=wildcards.modality, model=wildcards.model, center=wildcards.center, kind=kind)


LOCO_MODELS = list(config["loco_models"]) or trainable_models()


def loco_modalities():
    return [m for m in MODALITIES if config["modalities"][m]["leave_one_center_out"]]


def loco_train_center_tables(wildcards):
    """The training centers' tables of the model that leaves {center} out."""
    m = wildcards.modality
    return [center_table(m, c) for c in centers(m, "train-cv") if c != wildcards.center]


def loco_train_files(wildcards):
    """Images and labels the held-out-center model trains on: never a scan of {center}."""
    return [
        f
        for c in centers(wildcards.modality, "train-cv")
        if c != wildcards.center
        for f in files_listed(wildcards.modality, c, ["image", "label"])
    ]


def loco_table_all():
    return [paper_table("loco", ext) for ext in PAPER_TABLE_FORMATS] if loco_modalities() else []


def metrics_of_modality(m):
    """Every per-case metrics table of one modality, whatever its setting: cv/external
    (centers/<c>/metrics.tsv of every model of the modality: trainable ones, and released and prompted
    models, whose rows carry their own setting) and loco (centers/<c>/loco_metrics.tsv)."""
    files = [path("metrics", modality=m, model=model, center=c) for model in models_for(m) for c in centers(m)]
    if m in loco_modalities():
        files += [
            path("loco_metrics", modality=m, model=model, center=c)
            for model in LOCO_MODELS
            for c in centers(m, "train-cv")
        ]
    return files


def modality_metrics(wildcards):
    """Input function: every per-case metrics table of the {modality} (metrics_of_modality)."""
    return metrics_of_modality(wildcards.modality)


def metrics_all(wildcards=None):
    """Every per-case metrics table of every modality."""
    return [f for m in MODALITIES for f in metrics_of_modality(m)]


def model_metrics(wildcards):
    """Per-center metrics of one modality x model."""
    m = wildcards.modality
    return [path("metrics", modality=m, model=wildcards.model, center=c) for c in centers(m)]


def modality_center_tables(wildcards):
    return [center_table(wildcards.modality, c) for c in centers(wildcards.modality)]


def model_mask_dirs(wildcards):
    m = wildcards.modality
    model = wildcards.model
    return [path("masks", modality=m, model=model, center=c, kind=masks_kind(m, model, c)) for c in centers(m)]


def fold_curves(wildcards):
    return [f"{fold_dir(wildcards.modality, wildcards.model, f)}/training_curve.tsv" for f in FOLDS]


def stats_files_all(name):
    def get(wildcards):
        return [stats_file(m, name) for m in MODALITIES]

    return get


def loco_stats_files(name):
    """Input function: a statistics table of every modality with the leave-one-center-out experiment."""

    def get(wildcards):
        return [stats_file(m, name) for m in loco_modalities()]

    return get


# The placeholder participant_regex makes every original scan name its own participant.
PLACEHOLDER_PARTICIPANT_REGEX = "^(?P<participant>.+)$"


def participant_grouping_note():
    """A warning for report captions when a modality's participants are not grouped (placeholder regex)."""
    ungrouped = [
        m for m, mc in config["modalities"].items() if mc.get("participant_regex") == PLACEHOLDER_PARTICIPANT_REGEX
    ]
    if not ungrouped:
        return ""
    return (
        f"WARNING: participants are not grouped for {', '.join(ungrouped)} (placeholder participant_regex): every "
        "scan counts as its own participant, so repeat scans of one person are treated as independent."
    )


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


def setting_of_center(wildcards):
    """How a center's cases were predicted (workflow_scripts/evaluation/settings.py): released or prompted for a model that
    only predicts; else out-of-fold (cv) or by the fold ensemble (external), the fold count in its own column
    (evaluate --n-folds)."""
    setting = model_setting(wildcards.model)
    if setting:
        return setting
    return "cv" if center_role(wildcards.modality, wildcards.center) == "train-cv" else "external"


def role_of_center(wildcards):
    return center_role(wildcards.modality, wildcards.center)


def data_source_of_modality(wildcards):
    return data_source_label(wildcards.modality)


def data_source_of_center(wildcards):
    return data_source_label(wildcards.modality, wildcards.center)


# ---- sources (rules/download.smk) ----------------------------------------------------------
def source_settings(wildcards):
    """The source's config block (minus `type`) as one shell-quoted JSON argument."""
    settings = {k: v for k, v in config["sources"][wildcards.source].items() if k != "type"}
    return shlex.quote(json.dumps(settings, sort_keys=True))


def download_cache(wildcards):
    return f"{DOWNLOADS}/{wildcards.source}"


def local_source_path(wildcards):
    return config["sources"][wildcards.source]["path"]


def local_source_files(wildcards):
    """The user's folder and every file in it (a missing folder is reported as a missing input)."""
    path = local_source_path(wildcards)
    return [path, *folder_files(path)] if Path(path).is_dir() else [path]


def center_source_files(wildcards):
    """Every file of this center in its (built) source, kept or excluded: the inventory (workflow_scripts/data/inventory.py)."""
    name = center_source(wildcards.modality, wildcards.center)
    raw = getattr(checkpoints, f"{config['sources'][name]['type']}_source").get(source=name).output[0]
    folder = config["modalities"][wildcards.modality]["folder"]
    return center_input_files(Path(raw, folder), wildcards.center)


def model_param(key):
    def get(wildcards):
        return model_conf(wildcards.model)[key]

    return get


def model_network_json(wildcards):
    return json.dumps(model_conf(wildcards.model)["network"], separators=(",", ":"), sort_keys=True)


def model_folder(wildcards):
    return run_dir(wildcards.modality, wildcards.model)


def loco_model_folder(wildcards):
    return run_dir(wildcards.modality, wildcards.model, wildcards.center)


def inference_params():
    """Every inference setting (a change re-runs every prediction, never a training)."""
    return dict(sorted(config["inference"].items()))


def center_cases(wildcards):
    return center_table(wildcards.modality, wildcards.center)


def files_listed(modality, center, columns, direct=False):
    """Files a prepared center table lists.

    Declaring them as inputs lets Snakemake notice a label or image edited in place, which the
    source's folder output cannot show: an external center's new labels then re-run only its
    evaluation; a training center's re-run training, as they must. prepare_center is a
    checkpoint, so these inputs are known (and stay the same) from the first run on.
    """
    rows = _center_rows(modality, center, direct)
    return sorted({row[c] for row in rows for c in columns if row.get(c)})


def center_image_files(wildcards):
    return files_listed(wildcards.modality, wildcards.center, ["image"])


def ancient_center_cases(wildcards):
    return ancient(center_cases(wildcards))


def ancient_train_center_tables(wildcards):
    return [ancient(t) for t in train_center_tables(wildcards)]


def center_label_files(wildcards):
    return files_listed(wildcards.modality, wildcards.center, ["label"])


def train_center_files(wildcards):
    return [
        f
        for c in centers(wildcards.modality, "train-cv")
        for f in files_listed(wildcards.modality, c, ["image", "label"])
    ]


def nnunet_configurations(wildcards=None):
    """The nnU-Net configurations the chosen models need (e.g. 3d_fullres, 2d)."""
    return sorted({model_conf(m)["configuration"] for m in trainable_models()})


def target_spacing_arg():
    spacing = config["plan"].get("target_spacing")
    return shlex.join(["--target-spacing", *(str(s) for s in spacing)]) if spacing else ""


# ---- model bundles and segmentation of new scans (rules/bundle.smk, rules/segment.smk) -----
SEGMENT_JOBS = config["segment"]


def bundle_path(modality, model):
    return path("bundle", modality=modality, model=model)


def all_bundles():
    """Bundles exported by this workflow: trained models only (released ones are bundles already)."""
    return [bundle_path(m, model) for m in MODALITIES for model in trainable_models()]


def segment_job_regex():
    """Regex for the {segment_job} wildcard: the names under config `segment` (never matches if none)."""
    return "|".join(re.escape(n) for n in sorted(SEGMENT_JOBS)) or "(?!)"


def segment_outputs():
    return [path("segment", segment_job=name) for name in sorted(SEGMENT_JOBS)]


def segment_bundle(wildcards):
    return SEGMENT_JOBS[wildcards.segment_job]["bundle"]


def segment_input(wildcards):
    return SEGMENT_JOBS[wildcards.segment_job]["input"]


def segment_options(wildcards):
    """Command-line options of one segment job (device, mirroring, failure handling)."""
    job = SEGMENT_JOBS[wildcards.segment_job]
    options = ["--device", job["device"]]
    if job["mirroring"] is not None:
        options.append("--mirroring" if job["mirroring"] else "--no-mirroring")
    if job["allow_failed_scans"]:
        options.append("--allow-failures")
    if job["keep_converted"]:
        options.append("--keep-converted")
    return shlex.join(options)


# ---- nnU-Net v1 models imported as bundles (rules/bundle.smk, docs/released_weights.md) ------
V1_IMPORTS = config["v1_imports"]


def imported_bundle_path(name):
    return path("imported", v1_import=name)


def imported_bundles():
    return [imported_bundle_path(name) for name in sorted(V1_IMPORTS)]


def v1_import_regex():
    """Regex for the {v1_import} wildcard: the names under config `v1_imports` (never matches if none)."""
    return "|".join(re.escape(n) for n in sorted(V1_IMPORTS)) or "(?!)"


def v1_import_files(wildcards):
    """The files of a v1 model folder the import reads (so editing one re-imports); the folder itself
    while it does not exist yet (Snakemake then names it as the missing input)."""
    job = V1_IMPORTS[wildcards.v1_import]
    folder = Path(job["model_dir"])
    files = sorted(
        str(p)
        for pattern in (
            "plans.pkl",
            "postprocessing.json",
            "fold_*/model_final_checkpoint.model*",
            "fold_*/postprocessing.json",
            "fold_*/validation_raw/summary.json",
        )
        for p in folder.glob(pattern)
    )
    if job["plans"]:
        files.append(job["plans"])
    return files or [str(folder)]


def v1_import_options(wildcards):
    job = V1_IMPORTS[wildcards.v1_import]
    options = [
        f"--model-dir {shlex.quote(job['model_dir'])}",
        f"--modality {shlex.quote(job['modality'])}",
        f"--model {shlex.quote(job['model'])}",
        "--mirroring" if job["mirroring"] else "--no-mirroring",
    ]
    if job["plans"]:
        options.append(f"--plans {shlex.quote(job['plans'])}")
    return " ".join(options)


# ---- how jobs run ---------------------------------------------------------------------------
def job_shell_prefix():
    """Shell prefix of every job: the package on PYTHONPATH; without conda envs, the interpreter
    that runs Snakemake first on PATH (so an un-activated .venv/bin/snakemake runs jobs in .venv)."""
    prefix = "export PYTHONPATH={workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}; "
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
        interpreter_dir = shlex.quote(str(Path(sys.executable).parent)).replace("{", "{{").replace("}", "}}")
        prefix += f"export PATH={interpreter_dir}:$PATH; "
    return prefix


# ---- upgrades -------------------------------------------------------------------------------
def adopt_legacy_training():
    """Finished folds trained by the workflow before the training recipe (<= 80adb6e) are not trained
    again when their recipe is unchanged (workflow_scripts/common/upgrade.py). Runs before the DAG is built."""
    if not workflow.is_main_process or not Path(".snakemake", "metadata").is_dir():
        return
    from workflow_scripts.common import upgrade

    jobs = []
    for m in MODALITIES:
        try:
            scans = [f for c in centers(m, "train-cv") for f in files_listed(m, c, ["image", "label"], direct=True)]
        except FileNotFoundError:
            continue  # not prepared yet: nothing can have been trained
        for model in trainable_models():
            mc, network = model_conf(model), model_network_json(SimpleNamespace(model=model))
            legacy = [
                upgrade.legacy_train_params(
                    dataset_id=config["modalities"][m]["dataset_id"],
                    trainer=mc["trainer"],
                    configuration=mc["configuration"],
                    network_json=network,
                    results_root=model_root(m, model),
                    training=config["training"],
                    mirroring=mirroring,
                )
                for mirroring in (True, False)
            ]
            for fold in FOLDS:
                folder = fold_dir(m, model, fold)
                jobs.append(
                    upgrade.TrainingJob(
                        outputs=[
                            f"{folder}/{name}"
                            for name in ("checkpoint_final.pth", "train_info.json", "training_curve.tsv")
                        ],
                        code=rules.train.rule.shellcmd,
                        params=[repr(training_recipe(m, model, fold=fold, direct=True))],
                        input=[path("preprocessed", modality=m), path("splits_json", modality=m), *scans],
                        legacy_params=legacy,
                    )
                )
    adopted = upgrade.adopt_legacy_training(".snakemake", jobs)
    if adopted:
        print(
            f"Adopted {len(adopted)} finished training folds trained by an earlier version of this workflow "
            "(same recipe): they are not trained again.",
            file=sys.stderr,
        )


def adopt_requoted_commands():
    """Finished jobs whose rule's command only gained `:q` quoting since they ran are not re-run
    (workflow_scripts/common/upgrade.py, REQUOTED_RULES). Runs before the DAG is built."""
    if not workflow.is_main_process or not Path(".snakemake", "metadata").is_dir():
        return
    from workflow_scripts.common import upgrade

    current = {r.name: r.shellcmd for r in workflow.rules if r.shellcmd}
    changed = upgrade.adopt_requoted_commands(".snakemake", current)
    if changed:
        print(f"Kept {changed} finished job outputs whose rule's command only gained quoting.", file=sys.stderr)

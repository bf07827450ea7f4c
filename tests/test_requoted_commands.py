"""Rules whose command only gained `:q` quoting keep their finished jobs (common/upgrade.py)."""

import json
import re
import subprocess
import sys
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest

from workflow_scripts.common import upgrade

REPO = Path(__file__).resolve().parents[1]
DUMP = """include: {snakefile!r}
import json as _json
with open({out!r}, "w") as _f:
    _json.dump({{r.name: r.shellcmd for r in workflow.rules if r.shellcmd}}, _f)
"""

PREVIOUS = json.loads(upgrade.REQUOTED_RULES.read_text(encoding="utf-8"))
# nnunet_raw: `--description 'PanSeg {modality} ({kind} data)'` became `--data-kind {kind:q}`, which
# the script turns into the same description (tests/test_prepare.py checks the dataset.json).
CLI_CHANGED = {"nnunet_raw", "nnunet_raw_loco"}


@pytest.fixture(scope="module")
def snakemake_rules(tmp_path_factory):
    """Every rule's shell command as Snakemake parses it from the workflow (a dry run of the demo)."""
    tmp = tmp_path_factory.mktemp("rules")
    (tmp / "dump.smk").write_text(DUMP.format(snakefile=str(REPO / "Snakefile"), out=str(tmp / "rules.json")))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(tmp / "dump.smk"), "-n", "--cores", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "rules.json").read_text())


def _unquoted(cmd: str) -> str:
    return re.sub(r"'(\{params\.\w+\})'", r"\1", cmd).replace(":q}", "}")


def test_previous_commands_differ_from_the_current_ones_only_by_quoting(snakemake_rules):
    assert PREVIOUS and not {"train", "train_loco"} & set(PREVIOUS)
    for rule, old in PREVIOUS.items():
        assert rule in snakemake_rules, f"{rule} is no rule any more"
        if rule in CLI_CHANGED:
            continue
        assert _unquoted(snakemake_rules[rule]) == _unquoted(old), rule


def _record(metadata, output, rule, code):
    name = urlsafe_b64encode(output.encode()).decode()
    (metadata / name).write_text(json.dumps({"rule": rule, "code": code, "params": ["'x'"]}))
    return metadata / name


def test_adoption_rewrites_only_matching_records_once(tmp_path):
    metadata = tmp_path / "metadata"
    metadata.mkdir()
    previous = {"predict": "old {input}", "tables": "old tables {input}"}
    current = {"predict": "old {input:q}", "tables": "old tables {input:q}", "train": "train"}
    same = _record(metadata, "a", "predict", "old {input}")
    other_code = _record(metadata, "b", "predict", "something else")
    other_rule = _record(metadata, "c", "train", "old {input}")
    assert upgrade.adopt_requoted_commands(tmp_path, current, previous) == 1
    assert json.loads(same.read_text()) == {"rule": "predict", "code": "old {input:q}", "params": ["'x'"]}
    assert json.loads(other_code.read_text())["code"] == "something else"
    assert json.loads(other_rule.read_text())["code"] == "old {input}"
    # the scan runs once: a stamp in .snakemake marks it done
    _record(metadata, "d", "tables", "old tables {input}")
    assert upgrade.adopt_requoted_commands(tmp_path, current, previous) == 0
    assert not list(metadata.glob("*.panseg-tmp"))

"""Print every rule of the workflow as JSON: local or not, conda env, threads, resources, command.

    python tests/rule_inventory.py CONFIGFILE

Loads the workflow through Snakemake's API (no DAG, no job runs) in a scratch working directory.
Run as a subprocess by the tests: the API changes the working directory and sets up logging.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _plain(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)


def inventory(configfile: Path) -> dict:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with tempfile.TemporaryDirectory() as work, SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[configfile.resolve()]),
            snakefile=REPO / "Snakefile",
            workdir=Path(work),
        )
        workflow = workflow_api._workflow  # the parsed workflow (Snakemake has no public accessor)
        rules = []
        for rule in workflow.rules:
            conda = rule.conda_env
            if conda is not None:
                conda = str((Path(rule.snakefile).parent / str(conda)).resolve())
            resources = {k: _plain(v.value) for k, v in rule.resources.items() if not v.is_evaluable()}
            rules.append(
                {
                    "name": rule.name,
                    "snakefile": str(Path(rule.snakefile).resolve().relative_to(REPO)),
                    "local": rule.name in workflow._localrules,
                    "norun": bool(rule.norun),
                    "conda": conda,
                    "envmodules": list(rule.env_modules or []),
                    "threads": resources.pop("_cores", None),
                    "resources": {k: v for k, v in resources.items() if not k.startswith("_")},
                    "shellcmd": rule.shellcmd,
                    "params": sorted(rule.params._names),
                    "input": sorted(rule.input._names),
                }
            )
        return {"rules": rules}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/rule_inventory.py CONFIGFILE")
    print(json.dumps(inventory(Path(sys.argv[1])), indent=1))

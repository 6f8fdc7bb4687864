"""The folders are layers, and the import graph keeps them so (read from the code with ``ast``):

  cli/      the command line, client tools, demo           may import everything below
  streams/  the worker (faust), its settings and topics     models/, state/
  models/   the recommender: records, model, updater, training, evaluation   state/
  state/    user state, item store, errors                  nothing of the project

and the worker's pure steps do not import faust, so they run and are tested without it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "state": set(),
    "models": {"state"},
    "streams": {"models", "state"},
    "cli": {"streams", "models", "state"},
}
PURE = [
    "streams/schemas.py",
    "streams/ingest.py",
    "streams/boundary.py",
    "streams/dead_letters.py",
    "streams/decay.py",
    "streams/erasure.py",
    "streams/offsets.py",
    "streams/durability.py",
    "streams/settings.py",
    "models/updater.py",
    "models/records.py",
]


def imports(path: Path, runtime_only: bool = False) -> set[str]:
    """Top-level package of every module ``path`` imports (``runtime_only``: not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_layer_imports_only_the_layers_below_it(layer):
    project = set(LAYERS)
    wrong = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        above = {
            m
            for m in imports(path)
            if m.split(".")[0] in project and m.split(".")[0] not in LAYERS[layer] | {layer}
        }
        if above:
            wrong[str(path.relative_to(ROOT))] = sorted(above)
    assert not wrong, f"{layer}/ may import {sorted(LAYERS[layer])} only: {wrong}"


@pytest.mark.parametrize("module", PURE)
def test_the_pure_steps_do_not_import_faust(module):
    assert not {
        m for m in imports(ROOT / module, runtime_only=True) if m.split(".")[0] in ("faust", "mode")
    }


def test_importing_the_worker_reads_no_environment_and_builds_nothing():
    """A bad setting in the environment would fail a module that read it at import."""
    code = (
        "import gc, faust, streams.app, streams.event_agent, streams.catalogue_agents, streams.worker\n"
        "assert not [o for o in gc.get_objects() if isinstance(o, faust.App)], 'an app was built at import'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"INTEREST_PARTITIONS": "not-a-number", "PATH": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

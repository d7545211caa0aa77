"""The shape of the imports: layers that only point down, and no cycles inside a package.

`plugins` -> `registry` -> `backends`; `backends` may import `registry.errors` and nothing
else above it. The contracts live in `[tool.importlinter]` of pyproject.toml and are checked
by import-linter (`lint-imports` in the repository root gives the same report). Imports
inside functions count: a lazy import upward is still an upward import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages and pyproject.toml in `root`."""
    return subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo"], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_every_import_contract_is_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, f"import-linter:\n{result.stdout}\n{result.stderr}"
    assert "2 kept, 0 broken" in result.stdout, result.stdout


def test_the_contracts_say_what_the_architecture_says():
    # Weakening a contract in pyproject.toml (a layer dropped, one more exception) fails here, not silently.
    from importlinter.api import read_configuration

    configuration = read_configuration(str(PYPROJECT))
    assert configuration["session_options"]["root_packages"] == ["plugins", "registry", "backends"]
    contracts = {contract["id"]: contract for contract in configuration["contracts_options"]}
    assert contracts["layers"]["type"] == "layers"
    assert contracts["layers"]["layers"] == ["plugins", "registry", "backends"]
    assert contracts["layers"]["ignore_imports"] == ["backends.** -> registry.errors"]
    assert contracts["acyclic"]["type"] == "acyclic_siblings"
    assert sorted(contracts["acyclic"]["ancestors"]) == ["backends", "plugins", "registry"]
    assert not {"ignore_imports", "skip_descendants", "depth"} & set(contracts["acyclic"])


def test_an_upward_import_and_a_cycle_are_reported(tmp_path):
    # The same contracts over a copy of the packages with one lazy import upward and one cycle added.
    for package in ("plugins", "registry", "backends"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "backends" / "configs.py", "a", encoding="utf-8") as module:
        module.write("\n\ndef _upward():\n    from registry import references\n")
    with open(tmp_path / "registry" / "errors.py", "a", encoding="utf-8") as module:
        module.write("\n\ndef _around():\n    from registry import home\n")  # registry.home imports registry.errors
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.read_text(encoding="utf-8"), encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
    assert "0 kept, 2 broken" in result.stdout, result.stdout
    assert "backends.configs -> registry.references" in result.stdout, result.stdout
    assert "No cycles are allowed in registry" in result.stdout, result.stdout

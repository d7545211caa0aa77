"""Shared test harness: the HF fixture, tiny registries, and an in-process CLI runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "hf-gpt2-tiny"


# The longest files start first, so the two test workers finish together rather than one
# starting the quickstart when everything else is done.
LONGEST_FIRST = ("test_quickstart.py", "test_distill.py", "test_quantize.py", "test_export.py")


def pytest_collection_modifyitems(items):
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: a file keeps its order


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    assert (FIXTURE / "reference.json").is_file(), f"the Hugging Face fixture is missing at {FIXTURE}"
    return FIXTURE


@pytest.fixture(scope="session")
def reference(fixture_dir) -> dict:
    return json.loads((fixture_dir / "reference.json").read_text())


class CliResult:
    def __init__(self, code, out, err):
        self.exit_code, self.stdout, self.stderr = code, out, err

    def json(self):
        return json.loads(self.stdout)

    def __repr__(self):
        return f"CliResult(exit_code={self.exit_code}, stdout={self.stdout[-500:]!r}, stderr={self.stderr[-800:]!r})"


@pytest.fixture
def gpt2reg(capsys):
    """Run `gpt2reg ARGS...` in this process (no TensorFlow start-up per call)."""
    from registry.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def imported_home(tmp_path_factory, fixture_dir) -> Path:
    """A registry holding the Hugging Face fixture as `fx/1`."""
    from registry import Registry

    home = tmp_path_factory.mktemp("imported")
    Registry(home).import_("fx", str(fixture_dir))
    return home


@pytest.fixture(scope="session")
def family_home(tmp_path_factory) -> Path:
    """A registry with a tiny `base/1` and its short fine-tune `base-finetune/1`."""
    from registry import Registry

    home = tmp_path_factory.mktemp("family")
    text = tmp_path_factory.mktemp("data") / "train.txt"
    text.write_text(_corpus_sample(), encoding="utf-8")
    reg = Registry(home)
    base = reg.create("base", config="tiny", seed=0)
    reg.run("finetune", base, data=[str(text)], steps=6, batch_size=4, seq_len=32, lr=3e-3)
    return home


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text(_corpus_sample(), encoding="utf-8")
    return path


def _corpus_sample() -> str:
    from registry.corpus import documents

    texts, _ = documents()
    return "\n\n".join(texts[:12])


def store_snapshot(home: Path) -> dict:
    """What a user could see change in a store: variants, MLflow versions and runs, files."""
    from registry import Registry

    snapshot = {"files": sorted(
        str(p.relative_to(home)) for p in home.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm", ".db"))
    )}
    if (home / "lineage.db").exists():
        reg = Registry(home)
        snapshot["variants"] = [v.ref for v in reg.list()]
        snapshot["versions"] = sorted(f"{v.name}/{v.version}" for v in reg.tracker.versions())
        snapshot["runs"] = sorted(r.info.run_id for r in reg.tracker.search_runs())
        reg.close()
    return snapshot


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    # Tests never touch a user's ./mlruns or plugin settings.
    monkeypatch.delenv("GPT2REG_HOME", raising=False)
    monkeypatch.delenv("GPT2REG_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.chdir(tmp_path)

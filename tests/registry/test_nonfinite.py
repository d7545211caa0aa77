"""Weights that are not finite are refused wherever a variant is made, or registered with a visible warning.

One NaN in one attention kernel makes a model compute NaN, yet it loads and
saves like any other. The core scans every variant it records: an import,
and whatever a capability (built in or a plugin's) hands it.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from registry import Capability, CapabilityResult, Registry, hookimpl
from tests.conftest import store_snapshot

NAN_IN_QUERY = "transformer_layer_0/self_attention/query/kernel holds 1 NaN value(s)"
NAN_IN_SOURCE = "transformer.h.0.attn.c_attn.weight holds 1 NaN value(s)"
INF_IN_NORM = "layer_norm/gamma holds 1 infinite value(s)"


@pytest.fixture(scope="module")
def home(tmp_path_factory, fixture_dir) -> Path:
    """A registry of its own (these tests add variants) holding the clean fixture as `fx/1`."""
    home = tmp_path_factory.mktemp("nonfinite")
    Registry(home).import_("fx", str(fixture_dir))
    return home


@pytest.fixture
def nan_checkpoint(hf_folder) -> Path:
    """The Hugging Face fixture with its first attention kernel's first value set to NaN.

    In KerasHub's layout that value is layer 0's query kernel at [0, 0, 0].
    """
    folder = hf_folder
    weights = folder / "model.safetensors"
    with weights.open("r+b") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
        start, _ = header["transformer.h.0.attn.c_attn.weight"]["data_offsets"]
        file.seek(8 + length + start)
        file.write(struct.pack("<f", math.nan))
    return folder


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_an_import_with_a_nan_is_refused_and_registers_nothing(gpt2reg, home, nan_checkpoint):
    before = store_snapshot(home)
    result = gpt2reg("import", "poisoned", nan_checkpoint, "--home", home)
    assert result.exit_code == 2, result
    [line] = error_lines(result.stderr)
    # Refused from the source's own files, before TensorFlow loads: named as the checkpoint names it.
    assert NAN_IN_SOURCE in line and "pass --allow-nonfinite" in line, line
    assert store_snapshot(home) == before
    assert [v["ref"] for v in gpt2reg("list", "--json", "--home", home).json()["variants"]] == ["fx/1"]


def test_allow_nonfinite_registers_it_with_a_warning_that_show_and_list_display(gpt2reg, home, nan_checkpoint):
    result = gpt2reg("import", "poisoned", nan_checkpoint, "--allow-nonfinite", "--home", home)
    assert result.exit_code == 0, result
    warning = f"nonfinite-weights: {NAN_IN_QUERY}"
    assert f"warning: poisoned/1: {warning}" in result.stdout

    shown = gpt2reg("show", "poisoned", "--home", home)
    assert f"warning: poisoned/1: {warning}" in shown.stdout, shown
    listed = gpt2reg("list", "--home", home)
    assert f"warning: poisoned/1: {warning}" in listed.stdout, listed
    assert "fx/1:" not in listed.stdout  # the clean variant carries no warning
    assert gpt2reg("show", "poisoned", "--json", "--home", home).json()["tags"]["warning"] == warning

    registry = Registry(home)
    [version] = [v for v in registry.tracker.versions() if v.name == "poisoned"]
    assert version.tags["gpt2reg.warning"] == warning
    assert registry.tracker.get_run(version.run_id).data.tags["gpt2reg.warning"] == warning


class BlowUp(Capability):
    """Makes a variant of its parent with one infinite value in the final layer norm, as a diverged update would."""

    name = "blowup"
    operation = "blowup"

    @dataclass
    class Options:
        pass

    def run(self, context, options):
        preset = context.workdir / "preset"
        shutil.copytree(context.parent_preset(), preset, ignore=shutil.ignore_patterns("gpt2reg.json", "MLmodel"))
        for file in preset.rglob("*"):
            file.chmod(0o755 if file.is_dir() else 0o644)
        with h5py.File(preset / "model.weights.h5", "r+") as store:
            gamma = store["layers/layer_normalization/vars/0"]
            values = gamma[()]
            values[3] = np.inf
            gamma[...] = values
        return CapabilityResult(preset_dir=preset, settings={"blown": "layer_norm"})


class BlowUpPlugin:
    @hookimpl
    def register_capabilities(self, register):
        register(BlowUp)


@pytest.fixture
def blowup_plugin():
    from registry import plugins

    manager = plugins.load_plugins()
    plugin = BlowUpPlugin()
    manager.register(plugin, name="test-blowup")
    yield
    manager.unregister(plugin)


def test_a_capability_whose_result_is_not_finite_is_refused_the_same_way(gpt2reg, home, blowup_plugin):
    before = store_snapshot(home)
    result = gpt2reg("blowup", "fx", "--home", home)
    assert result.exit_code == 2, result
    [line] = error_lines(result.stderr)
    assert INF_IN_NORM in line and "pass --allow-nonfinite" in line, line
    assert store_snapshot(home) == before  # no variant, no version, no run, no files left in staging

    allowed = gpt2reg("blowup", "fx", "--allow-nonfinite", "--json", "--home", home)
    assert allowed.exit_code == 0, allowed
    made = allowed.json()
    assert made["tags"]["warning"] == f"nonfinite-weights: {INF_IN_NORM}"
    registry = Registry(home)
    assert registry.get(made["ref"]).tags["warning"] == made["tags"]["warning"]  # the lineage row
    [version] = [v for v in registry.tracker.versions() if v.name == made["name"]]
    assert version.tags["gpt2reg.warning"] == made["tags"]["warning"]

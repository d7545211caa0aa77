"""Quantized variants: recorded with their costs and gains, refused when they make no sense, reloadable."""

import json
import os
import subprocess
import sys

import pytest

from registry import Registry

MODES = ["int8", "int4", "float8", "float16", "bfloat16", "gptq", "awq"]

# A process that never imported the project before: load each variant and generate with it.
RELOAD_AND_GENERATE = """
import json, sys
from registry import Registry
reg = Registry(sys.argv[1])
lengths = {}
for ref in sys.argv[2:]:
    out = reg.run("generate", ref, prompts=["The meaning of"], max_new_tokens=4)
    lengths[ref] = len(out.output["outputs"][0]["token_ids"])
print(json.dumps(lengths))
"""


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, fixture_dir, text_file):
    home = tmp_path_factory.mktemp("quantize-home")
    held_out = home / "eval.txt"
    held_out.write_text(text_file.read_text()[:1500])
    reg = Registry(home)
    reg.import_("fx", str(fixture_dir))
    variants = {}
    for mode in MODES:
        calibration = {"calibration": [str(text_file)], "calibration_samples": 2} if mode in ("gptq", "awq") else {}
        variants[mode] = reg.run("quantize", "fx/1", name=f"fx-{mode}", mode=mode, eval_data=[str(held_out)],
                                 new_tokens=4, **calibration)
    return reg, variants


@pytest.mark.parametrize("mode", MODES)
def test_a_quantized_variant_records_its_size_perplexity_and_speed_before_and_after(quantized, mode):
    reg, variants = quantized
    variant, base = variants[mode], reg.get("fx/1")
    if mode == "float8":
        # Keras's float8 is for float8 matmuls, not storage: it keeps the float32 kernels and adds scales.
        assert variant.size_bytes > base.size_bytes
    else:
        assert variant.size_bytes < base.size_bytes
    assert variant.tags["quantization"] == mode
    edge = reg.lineage(variant)["edges"][-1]
    assert edge["operation"] == "quantize" and edge["settings"]["mode"] == mode
    deltas = edge["metric_deltas"]
    assert deltas["size_bytes"] == variant.size_bytes - base.size_bytes
    assert {"perplexity", "greedy_tokens_per_second"} <= set(deltas)
    # Random weights: perplexity near the vocabulary size, and a quantized copy stays close to its parent.
    parent_perplexity = variant.metrics["perplexity"] - deltas["perplexity"]
    assert variant.metrics["perplexity"] == pytest.approx(parent_perplexity, rel=0.2)


def test_every_quantized_variant_reloads_and_generates_in_a_fresh_process(quantized):
    reg, variants = quantized
    refs = [v.ref for v in variants.values()]
    done = subprocess.run([sys.executable, "-c", RELOAD_AND_GENERATE, str(reg.home.path), *refs],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {ref: 4 for ref in refs}


@pytest.mark.parametrize("args, message", [
    (["--mode", "int3"], "unknown --mode"),
    (["--mode", "gptq"], "needs --calibration"),
    (["--mode", "int8", "--calibration", "{text}"], "applies to gptq and awq only"),
    (["--mode", "gptq", "--calibration", "missing.txt"], "missing.txt does not exist"),
])
def test_bad_quantize_options_exit_2(quantized, gpt2reg, text_file, args, message):
    reg, _ = quantized
    args = [str(text_file) if arg == "{text}" else arg for arg in args]
    result = gpt2reg("quantize", "fx/1", *args, "--home", reg.home.path)
    assert result.exit_code == 2 and message in result.stderr


def test_quantizing_a_quantized_variant_is_refused(quantized, gpt2reg):
    reg, variants = quantized
    again = gpt2reg("quantize", variants["int8"].ref, "--mode", "int8", "--home", reg.home.path)
    assert again.exit_code == 2 and "already quantized to int8" in again.stderr
    other = gpt2reg("quantize", variants["int8"].ref, "--mode", "int4", "--home", reg.home.path)
    assert other.exit_code == 2 and "already quantized (int8)" in other.stderr

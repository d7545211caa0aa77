"""Quantized variants: recorded with their costs and gains, refused when they make no sense, reloadable."""

import json
import os
import subprocess
import sys

import pytest

from registry import Registry

RELOAD_AND_GENERATE = """
import json, sys
from registry import Registry
reg = Registry(sys.argv[1])
lm = reg.load(sys.argv[2])
out = reg.run("generate", sys.argv[2], prompts=["The meaning of"], max_new_tokens=4)
print(json.dumps({"tokens": len(out.output["outputs"][0]["token_ids"])}))
"""


@pytest.fixture(scope="module")
def quantize_home(tmp_path_factory, fixture_dir):
    home = tmp_path_factory.mktemp("quantize-home")
    Registry(home).import_("fx", str(fixture_dir))
    return home


@pytest.mark.parametrize("mode", ["int8", "int4", "float16", "bfloat16", "gptq", "awq"])
def test_a_quantized_variant_records_before_and_after_and_reloads_in_a_fresh_process(
        quantize_home, mode, gpt2reg, text_file):
    calibration = ["--calibration", text_file, "--calibration-samples", "4"] if mode in ("gptq", "awq") else []
    result = gpt2reg("quantize", "fx/1", "--mode", mode, *calibration, "--name", f"fx-{mode}", "--new-tokens", "8",
                     "--home", quantize_home, "--json")
    assert result.exit_code == 0, result
    reg = Registry(quantize_home)
    variant, base = reg.get(f"fx-{mode}/1"), reg.get("fx/1")
    assert variant.size_bytes < base.size_bytes  # every mode here stores fewer bytes
    assert variant.tags["quantization"] == mode
    edge = reg.lineage(variant)["edges"][-1]
    assert edge["operation"] == "quantize" and edge["settings"]["mode"] == mode
    deltas = edge["metric_deltas"]
    assert deltas["size_bytes"] < 0 and "perplexity" in deltas and "greedy_tokens_per_second" in deltas
    assert variant.metrics["perplexity"] == pytest.approx(base_perplexity(reg, variant), rel=0.5)
    done = subprocess.run([sys.executable, "-c", RELOAD_AND_GENERATE, str(quantize_home), variant.ref],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"tokens": 4}


def base_perplexity(reg, variant):
    # The parent's perplexity on the same text, from the edge: child - delta.
    edge = reg.lineage(variant)["edges"][-1]
    return variant.metrics["perplexity"] - edge["metric_deltas"]["perplexity"]


@pytest.mark.parametrize("args, message", [
    (["--mode", "int3"], "unknown --mode"),
    (["--mode", "gptq"], "needs --calibration"),
    (["--mode", "int8", "--calibration", "README.md"], "applies to gptq and awq only"),
])
def test_bad_quantize_options_exit_2(quantize_home, gpt2reg, args, message):
    result = gpt2reg("quantize", "fx/1", *args, "--home", quantize_home)
    assert result.exit_code == 2 and message in result.stderr


def test_quantizing_a_quantized_variant_is_refused(quantize_home, gpt2reg):
    first = gpt2reg("quantize", "fx/1", "--mode", "int8", "--name", "twice", "--new-tokens", "4", "--home", quantize_home)
    assert first.exit_code == 0, first
    again = gpt2reg("quantize", "twice/1", "--mode", "int8", "--home", quantize_home)
    assert again.exit_code == 2 and "already quantized to int8" in again.stderr

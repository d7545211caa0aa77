"""Exports: every format registered as a variant, delivered whole, and checked in its own runtime."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from registry import Registry
from registry.errors import UsageError

# (format, --quantize): every format, and every weight type the converters offer.
EXPORTS = [("keras", None), ("hf", None), ("savedmodel", None), ("tflite", None), ("tflite", "float16"),
           ("tflite", "int8"), ("onnx", None), ("onnx", "int8")]

# Runs where the project is not importable (another directory, isolated mode): TensorFlow alone.
LOAD_SAVEDMODEL_ALONE = """
import json, sys
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
ids = tf.constant(json.loads(sys.argv[2]), dtype=tf.int32)
logits = model.signatures["score"](token_ids=ids)["logits"].numpy()
new = model.signatures["generate"](token_ids=ids, max_new_tokens=tf.constant(8))["token_ids"].numpy()
project = sorted(m for m in ("registry", "backends", "plugins", "keras_hub") if m in sys.modules)
print(json.dumps({"last_logits": logits[0, -1].tolist(), "generated": new[0].tolist(), "project_modules": project}))
"""


def key(fmt, quantize):
    return f"{fmt}-{quantize}" if quantize else fmt


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fixture_dir, text_file):
    home = tmp_path_factory.mktemp("export-home")
    outside = tmp_path_factory.mktemp("exports")
    held_out = outside / "eval.txt"
    held_out.write_text(text_file.read_text()[:1500])
    reg = Registry(home)
    reg.import_("fx", str(fixture_dir))
    variants = {}
    for fmt, quantize in EXPORTS:
        variants[key(fmt, quantize)] = reg.run("export", "fx/1", name=f"fx-{key(fmt, quantize)}", format=fmt,
                                               out=str(outside / key(fmt, quantize)), quantize=quantize,
                                               eval_data=[str(held_out)], new_tokens=2)
    return reg, variants, outside


def keras_logits(reg, ids):
    lm = reg.get("fx/1").load()
    ids = np.asarray(ids, dtype="int32")
    return np.asarray(lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}))


@pytest.mark.parametrize("fmt, quantize", EXPORTS)
def test_each_export_is_a_variant_with_its_files_delivered_and_checked(exported, fmt, quantize):
    reg, variants, outside = exported
    variant = variants[key(fmt, quantize)]
    assert variant.kind == "export" and variant.operation == "export" and variant.parents == ("fx/1",)
    assert variant.tags["format"] == fmt and variant.tags["weights"] == (quantize or "float32")
    delivered = outside / key(fmt, quantize)
    manifest = json.loads((delivered / "gpt2reg.json").read_text())
    assert manifest["ref"] == variant.ref and manifest["content_hash"] == variant.content_hash
    # The delivered files are the logged files: same weights, same hash.
    from registry import artifacts

    assert artifacts.content_hash(delivered) == variant.content_hash == artifacts.content_hash(reg.preset_path(variant))
    assert not [p for p in outside.iterdir() if ".partial-" in p.name]
    edge = reg.lineage(variant)["edges"][-1]
    assert edge["operation"] == "export" and edge["settings"]["format"] == fmt
    assert {"perplexity", "greedy_tokens_per_second", "size_bytes"} <= set(edge["metric_deltas"])
    # Float exports compute what the source computes; quantized ones stay close.
    if quantize == "int8":  # 8-bit weights move logits by tenths on random weights; the ranking mostly holds
        assert variant.metrics["top1_agreement"] >= 0.75
    else:
        # float16 weights keep about three significant digits of each logit.
        assert variant.metrics["max_abs_logit_diff"] <= {None: 1e-4, "float16": 1e-2}[quantize]
    parent_perplexity = variant.metrics["perplexity"] - edge["metric_deltas"]["perplexity"]
    assert variant.metrics["perplexity"] == pytest.approx(parent_perplexity, rel=1e-4 if quantize is None else 0.02)
    if quantize is None:
        assert variant.metrics["top1_agreement"] == 1.0


def test_quantized_exports_are_smaller_than_float32(exported):
    _, variants, _ = exported
    assert variants["tflite-int8"].size_bytes < 0.6 * variants["tflite"].size_bytes
    assert variants["tflite-float16"].size_bytes < 0.6 * variants["tflite"].size_bytes
    assert variants["onnx-int8"].size_bytes < 0.6 * variants["onnx"].size_bytes
    # One copy of the tied embedding, not two: float32 ONNX is about the size of the weights.
    assert variants["onnx"].size_bytes < 1.1 * variants["tflite"].size_bytes


def test_hf_export_holds_the_fixture_and_its_tokenizer(exported, fixture_dir, reference):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    _, _, outside = exported
    folder = outside / "hf"
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
            "generation_config.json"} <= {p.name for p in folder.iterdir()}
    ours, theirs = load_file(folder / "model.safetensors"), load_file(fixture_dir / "model.safetensors")
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor, err_msg=name)
    config, fixture_config = (json.loads((f / "config.json").read_text()) for f in (folder, fixture_dir))
    for field in ("architectures", "n_embd", "n_head", "n_layer", "n_positions", "n_inner", "vocab_size",
                  "activation_function", "layer_norm_epsilon", "tie_word_embeddings", "model_type"):
        assert config[field] == fixture_config[field], field
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for case in reference["cases"]:
        assert tokenizer.encode(case["text"]).ids == case["token_ids"], case["text"]


def test_hf_export_imports_back_with_the_same_outputs_and_its_origin(exported, reference):
    reg, variants, outside = exported
    back = reg.import_("fx-back", str(outside / "hf"))
    assert back.parents == (variants["hf"].ref,)
    lineage = reg.lineage(back)
    edge = next(e for e in lineage["edges"] if e["child"] == back.ref)
    assert edge["role"] == "source" and edge["settings"]["files_match_export"] is True
    lm = back.load()
    for case in (c for c in reference["cases"] if "last_logits_first8" in c):
        ids = np.array([case["token_ids"]], dtype="int32")
        logits = np.asarray(lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
        np.testing.assert_allclose(logits, keras_logits(reg, ids), atol=1e-5)
        np.testing.assert_allclose(logits[0, -1, :8], case["last_logits_first8"], atol=1e-4)
    from backends import generation

    case = next(c for c in reference["cases"] if "greedy_16" in c)
    assert generation.generate(lm, [case["token_ids"]], max_new_tokens=16)[0].token_ids == case["greedy_16"]


def test_hf_export_carries_the_model_card_of_the_variant_it_holds(exported, text_file, tmp_path):
    from huggingface_hub import ModelCard

    reg, _, outside = exported
    held_out = outside / "eval.txt"
    # A variant with a parent, so that the card has a base model: the cheapest fine-tune there is.
    tuned = reg.run("finetune", "fx/1", name="fx-tuned", data=[str(text_file)], steps=1, batch_size=1, seq_len=16,
                    val_split=0.0)
    reg.run("export", tuned, name="fx-tuned-hf", format="hf", out=str(tmp_path / "hf"), eval_data=[str(held_out)],
            new_tokens=2)
    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.base_model == "fx/1" and card.data.base_model_relation == "finetune"
    assert card.data.gpt2_registry["ref"] == tuned.ref and card.data.gpt2_registry["relation"] == "finetune"
    assert card.data.library_name == "transformers"  # the folder is a transformers checkpoint
    assert card.data.datasets == [text_file.name]
    (result,) = [r for r in card.data.eval_results if r.dataset_name == "eval.txt"]
    assert result.metric_type == "perplexity" and result.metric_value > 1 and result.dataset_revision
    assert "- `fx/1` → `fx-tuned/1` (this variant): finetune:" in card.text
    assert "top-1 agreement 100.0%" in card.text
    # The card is one of the files logged with the export, not only a copy beside them.
    assert (reg.preset_path(reg.get("fx-tuned-hf")) / "README.md").read_text(encoding="utf-8") == \
        (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


def test_keras_export_imported_elsewhere_records_where_it_came_from(exported, tmp_path):
    reg, variants, outside = exported
    elsewhere = Registry(tmp_path / "other-home")
    imported = elsewhere.import_("copy", str(outside / "keras"))
    assert imported.parents == ()  # the export's registry is not this one: no edge, but the origin is kept
    run_params = elsewhere.tracker.get_run(imported.run_id).data.params
    assert run_params["exported_from"] == variants["keras"].ref and run_params["files_match_export"] == "True"


def test_savedmodel_scores_and_generates_with_tensorflow_alone(exported, reference, tmp_path):
    reg, _, outside = exported
    case = next(c for c in reference["cases"] if "greedy_16" in c)
    done = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_SAVEDMODEL_ALONE, str(outside / "savedmodel"), json.dumps([case["token_ids"]])],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["project_modules"] == []
    np.testing.assert_allclose(result["last_logits"][:8], case["last_logits_first8"], atol=1e-4)
    assert result["generated"] == case["greedy_16"][:8]


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_float32_file_exports_match_keras_in_their_own_runtime(exported, reference, fmt):
    reg, _, outside = exported
    ids = [next(c for c in reference["cases"] if "greedy_16" in c)["token_ids"]]
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(outside / "tflite" / "model.tflite")).get_signature_runner("score")
        logits = runner(token_ids=np.asarray(ids, dtype="int32"))["logits"]
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(outside / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"token_ids": np.asarray(ids, dtype="int32")})[0]
    np.testing.assert_allclose(logits, keras_logits(reg, ids), atol=1e-4)


def test_exports_keras_cannot_load_say_so_and_are_not_quantized_again(exported):
    reg, variants, _ = exported
    with pytest.raises(UsageError, match="onnx export, which Keras does not load"):
        variants["onnx"].load()
    with pytest.raises(UsageError, match="is an export"):
        reg.run("quantize", variants["keras"], mode="int8")
    with pytest.raises(UsageError, match="already an export"):
        reg.run("export", variants["hf"], format="onnx", out="never")
    assert variants["hf"].load().backbone.num_layers == 2


def test_compare_shows_exports_beside_their_source(exported, gpt2reg):
    reg, variants, _ = exported
    result = gpt2reg("compare", "fx/1", variants["onnx-int8"].ref, variants["tflite-int8"].ref, "--json",
                     "--home", reg.home.path)
    assert result.exit_code == 0, result
    document = result.json()
    assert [v["ref"] for v in document["variants"]] == ["fx/1", variants["onnx-int8"].ref, variants["tflite-int8"].ref]
    assert {"perplexity", "greedy_tokens_per_second", "max_abs_logit_diff"} <= set(document["metrics"])
    assert document["variants"][1]["tags"]["weights"] == "int8"


def test_doctor_finds_every_export_complete(exported):
    from registry.doctor import run_doctor

    reg, _, _ = exported
    assert run_doctor(reg)["problems"] == []


def test_a_failed_recording_delivers_nothing(exported, monkeypatch, tmp_path):
    from plugins.export import Export
    from registry import CapabilityResult
    from registry.errors import RegistryError
    from registry.recorder import Recorder

    reg, _, outside = exported
    before = [v.ref for v in reg.list()]

    def exported_files(self, context, options):  # what a finished export hands the core
        import shutil

        shutil.copytree(outside / "onnx", context.workdir / "export")
        return CapabilityResult(preset_dir=context.workdir / "export", deliver_to=tmp_path / "out")

    def full_disk(self, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Export, "run", exported_files)
    monkeypatch.setattr(Recorder, "record", full_disk)
    with pytest.raises(RegistryError, match="no space left on the disk"):
        reg.run("export", "fx/1", format="onnx", out=str(tmp_path / "out"))
    assert [p.name for p in tmp_path.iterdir() if "out" in p.name] == []  # neither the folder nor a partial copy
    assert [v.ref for v in reg.list()] == before
    assert list(reg.home.staging.iterdir()) == []

"""Loading a saved preset over the process's one tokenizer gives the model `from_preset` gives."""

import json

import numpy as np


def test_a_saved_preset_loads_over_the_shared_tokenizer_with_the_same_outputs(tmp_path):
    import keras_hub

    from backends import keras_gpt2
    from backends.tokenizer import keras_tokenizer

    keras_gpt2.save(keras_gpt2.build(keras_gpt2.get_config("tiny"), seed=3), tmp_path / "preset")
    loaded = keras_gpt2.load(tmp_path / "preset")
    reference = keras_hub.models.GPT2CausalLM.from_preset(str(tmp_path / "preset"))
    assert loaded.preprocessor.tokenizer is keras_tokenizer()  # no second set of lookup tables
    assert loaded.preprocessor.sequence_length == 128

    token_ids = np.array([[464, 3616, 286, 1204, 318, 0, 0]], dtype="int32")
    padding_mask = (np.arange(7) < 5).astype("int32")[None]
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), np.asarray(reference(inputs)))
    for lm in (loaded, reference):
        lm.compile(sampler="greedy")
    assert loaded.generate("The meaning of", max_length=12) == reference.generate("The meaning of", max_length=12)


def test_a_preset_with_another_tokenizer_loads_its_own(tmp_path):
    from backends import keras_gpt2
    from backends.tokenizer import keras_tokenizer

    keras_gpt2.save(keras_gpt2.build(keras_gpt2.get_config("tiny"), seed=3), tmp_path / "preset")
    merges = tmp_path / "preset" / "assets" / "tokenizer" / "merges.txt"
    lines = merges.read_text(encoding="utf-8").split("\n")
    merges.write_text("\n".join(lines[:-200]), encoding="utf-8")  # a vocabulary of its own: fewer merges
    loaded = keras_gpt2.load(tmp_path / "preset")
    assert loaded.preprocessor.tokenizer is not keras_tokenizer()
    assert len(loaded.preprocessor.tokenizer.merges) < len(keras_tokenizer().merges)
    assert json.loads((tmp_path / "preset" / "tokenizer.json").read_text())["class_name"] == "GPT2Tokenizer"

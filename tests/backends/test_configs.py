import pytest

from backends.configs import CONFIGS, parameter_count


def test_official_shapes_have_the_published_sizes():
    assert parameter_count(CONFIGS["gpt2"]) == 124_439_808
    assert CONFIGS["gpt2"]["num_layers"] == 12 and CONFIGS["gpt2"]["max_sequence_length"] == 1024
    assert parameter_count(CONFIGS["gpt2-medium"]) == 354_823_168
    assert parameter_count(CONFIGS["gpt2-large"]) == 774_030_080
    assert parameter_count(CONFIGS["gpt2-xl"]) == 1_557_611_200


@pytest.mark.parametrize("name", ["tiny"])
def test_formula_matches_keras(name):
    from backends import keras_gpt2

    lm = keras_gpt2.build(CONFIGS[name], seed=0)
    assert keras_gpt2.parameter_count(lm) == parameter_count(CONFIGS[name])

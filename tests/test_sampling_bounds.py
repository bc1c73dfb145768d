"""One rule for every sampling value, whatever gives it: a call's options, params.yaml, a bundle's generation_config.json."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.config import ConfigError, GenerationConfig, ValidateConfig, check_field
from src.inference.api import GenerationError, Options
from src.lib.runtime.bundle import BundleError
from src.lib.runtime.model import check_generation
from src.lib.runtime.sampling_bounds import SAMPLING_BOUNDS, out_of_bounds

VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30), st.booleans(),
                   st.text(max_size=4), st.none(), st.lists(st.integers(), max_size=2))
CONFIG = {"special_tokens": {"pad": 0, "unk": 1, "bos": 2, "eos": 3}}  # what check_generation holds token ids to


def refused(check) -> bool:
    try:
        check()
    except (ConfigError, GenerationError, BundleError):
        return True
    return False


@settings(max_examples=500, deadline=None, database=None)
@given(name=st.sampled_from(["temperature", "top_k", "top_p"]), value=VALUES)
def test_options_params_and_generation_config_refuse_exactly_the_same_values(name, value):
    bad = out_of_bounds(name, value) is not None
    if value is not None:  # None is an option's "the model's default"
        assert refused(lambda: Options(**{name: value}).check()) == bad
    assert refused(lambda: check_field(GenerationConfig, name, value)) == bad
    if name != "top_p":
        assert refused(lambda: check_field(ValidateConfig, name, value)) == bad
    generation = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, name: value}
    assert refused(lambda: check_generation(json.loads(json.dumps(generation)), CONFIG, "generation_config.json")) == (
        out_of_bounds(name, json.loads(json.dumps(value))) is not None)


@pytest.mark.parametrize("name, value", [("temperature", math.nan), ("temperature", -1), ("temperature", 10.5),
                                         ("top_k", -1), ("top_k", 1.5), ("top_k", True), ("top_p", 0),
                                         ("top_p", math.inf), ("repetition_penalty", 0.5), ("temperature", "0.8")])
def test_values_out_of_bounds_are_named_with_the_bounds(name, value):
    assert out_of_bounds(name, value) == SAMPLING_BOUNDS[name].words


@pytest.mark.parametrize("name, value", [("temperature", 0), ("temperature", 10), ("temperature", 5e-324),
                                         ("top_k", 0), ("top_k", 10**30), ("top_p", 1), ("top_p", 1e-300),
                                         ("repetition_penalty", 1), ("repetition_penalty", 10)])
def test_values_within_bounds_pass(name, value):
    assert out_of_bounds(name, value) is None

"""The tiny model's source and the builtin corpus, shared by the eval tests."""

import pytest

from quantbench import models
from quantbench.corpora import load_corpus
from quantbench.spec import ModelRef


@pytest.fixture(scope="module")
def source(tiny_model_dir):
    return models.resolve(ModelRef(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("builtin")

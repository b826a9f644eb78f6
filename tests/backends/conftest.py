"""Fixtures every adapter test shares: the tiny model resolved, and its unquantized logits."""

import pytest
import torch
from support import INPUT_IDS

from quantbench import models
from quantbench.spec import ModelRef


@pytest.fixture(scope="module")
def resolved(tiny_model_dir):
    return models.resolve(ModelRef(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def baseline(resolved):
    module = models.load(resolved, dtype="float32")
    with torch.inference_mode():
        logits = module(input_ids=INPUT_IDS).logits
    return module, logits

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer():
    from drope_lens.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def embedded_rope():
    from drope_lens.loading import load_embedded

    return load_embedded()


@pytest.fixture(scope="session")
def embedded_nope(embedded_rope):
    from drope_lens.loading import to_nope

    return to_nope(embedded_rope)


@pytest.fixture(scope="session")
def embedded_hf():
    from transformers import AutoModelForCausalLM

    from drope_lens.loading import embedded_checkpoint

    return AutoModelForCausalLM.from_pretrained(
        str(embedded_checkpoint()), dtype=torch.float32, attn_implementation="eager"
    ).eval()

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _hooked_available() -> bool:
    from drope_lens.loading.backend import hooked_available

    return hooked_available()


#: Test modules about HookedTransformer's internals: not importable where TransformerLens 4 removed it.
collect_ignore = (
    [] if _hooked_available() else ["loading/test_layout.py", "loading/test_zero_bias.py", "loading/test_pickling.py"]
)


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.hooked`` tests (HookedTransformer-only behaviour) run only when the suite's backend is
    ``hooked`` (TransformerLens < 4 and no ``DROPE_LENS_BACKEND=bridge``)."""
    from drope_lens.loading.backend import default_backend, tl_version

    backend = default_backend()
    if backend == "hooked":
        return
    version = ".".join(map(str, tl_version()))
    skip = pytest.mark.skip(reason=f"HookedTransformer only; this run uses the {backend} (TransformerLens {version})")
    for item in items:
        if item.get_closest_marker("hooked") is not None:
            item.add_marker(skip)


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

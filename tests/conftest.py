import os

# Triton runs on CPU only in interpreter mode, which must be chosen before any kernel module imports.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny_models import TINY_CONFIGS, build_hf_checkpoint  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """name -> directory of a random-weight transformers checkpoint saved with save_pretrained."""
    root = tmp_path_factory.mktemp("ckpt")
    return {name: build_hf_checkpoint(name, root / name) for name in TINY_CONFIGS}

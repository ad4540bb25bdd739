import os
import warnings

import pytest

# Each test session builds its models into a fresh cache, so tests never depend on (or write to)
# the user's ~/.cache/lowtune.
_cache = os.environ.setdefault(
    "LOWTUNE_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lowtune-test-cache-{os.getpid()}")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(scope="session")
def tiny_path():
    from lowtune import builtin

    return builtin.ensure("tiny-random")


@pytest.fixture
def tiny_recipe(tmp_path):
    """A fast SFT recipe on tiny-random writing into a temporary runs directory."""
    from lowtune.config import load_recipe

    return load_recipe(
        None,
        [
            "model.name=tiny-random",
            "data.n_train=64",
            "train.max_steps=4",
            "train.per_device_train_batch_size=4",
            "train.logging_steps=1",
            "eval.n=4",
            "eval.max_new_tokens=4",
            f"output.dir={tmp_path / 'runs'}",
            "output.quiet=true",
        ],
    )

import json
import os
import random
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


WORDS = ["apple", "river", "stone", "cloud", "green", "seven", "table", "light", "music", "paper"]


def write_separable_pairs(path, n, seed=0):
    """Chosen replies are polite, rejected ones rude; prompts and filler words vary."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = " ".join(rng.sample(WORDS, 3))
        rows.append(
            {
                "prompt": f"tell me about {topic}",
                "chosen": f"thank you, happy to help with {rng.choice(WORDS)}",
                "rejected": f"no. go away {rng.choice(WORDS)}",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(name="separable_pairs")
def separable_pairs_fixture():
    """write_separable_pairs(path, n): a preference file any reward model or DPO can learn."""
    return write_separable_pairs

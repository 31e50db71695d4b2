import os
import sys
from pathlib import Path

import pytest
import torch

# highway-env renders black frames under SDL's dummy driver; offscreen works headless
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))  # test helpers such as dot_task
torch.set_num_threads(min(2, os.cpu_count() or 1))

from support import COLCON_TESTS  # noqa: E402  (test/ is on sys.path from here on)


def under_colcon(config: pytest.Config) -> bool:
    """colcon's pytest step names the package as the junit prefix (colcon_core/task/python/test/pytest.py);
    TD3_COLCON_ALL_TESTS=1 runs the whole suite there too."""
    return (getattr(config.option, "junitprefix", None) == "td3_drive"
            and os.environ.get("TD3_COLCON_ALL_TESTS") != "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not under_colcon(config):
        return
    keep = [item for item in items if item.path.name in COLCON_TESTS]
    config.hook.pytest_deselected(items=[item for item in items if item.path.name not in COLCON_TESTS])
    items[:] = keep


@pytest.fixture
def small_batch():
    """A random replay batch (B=8) in the replay buffer's Batch layout."""
    from td3_drive.rl.synthetic import random_batch

    return random_batch(8, "cpu", seed=1)

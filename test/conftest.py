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


@pytest.fixture
def small_batch():
    """A random replay batch (B=8) in the replay buffer's Batch layout."""
    from td3_drive.rl.synthetic import random_batch

    return random_batch(8, "cpu", seed=1)

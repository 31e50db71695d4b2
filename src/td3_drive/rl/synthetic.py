"""Random data in the replay buffer's layout, for the benchmarks and the tests (never for training)."""
from __future__ import annotations

import torch

from td3_drive import topics as T
from td3_drive.rl.replay import Batch


def random_batch(batch: int, device: str | torch.device = "cpu", state_dim: int = T.STATE_DIM, action_dim: int = 2,
                 seed: int = 0) -> Batch:
    """A batch of random data in the layout of :meth:`ReplayBuffer.sample`, on ``device`` (benchmarks, tests)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 4, T.FRAME_SIZE, T.FRAME_SIZE)
    frames = lambda: torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)  # noqa: E731
    tensors = dict(obs=frames(), state=torch.randn(batch, state_dim, generator=g),
                   action=torch.rand(batch, action_dim, generator=g) * 2 - 1, reward=torch.randn(batch, 1, generator=g),
                   discount=torch.full((batch, 1), 0.99), next_obs=frames(),
                   next_state=torch.randn(batch, state_dim, generator=g))
    return Batch(**{name: x.to(device) for name, x in tensors.items()})

"""A tiny pixel control task for end-to-end learning tests.

An 84x84 image shows a dot (a bright square) and a target (a vertical bar) at
horizontal positions in [-1, 1].  The action's first component moves the dot
by up to ``SPEED``; reward is minus the distance to the target.  The final
distance after ``EPISODE_STEPS`` steps is the score (0 is perfect).

By default the target stays at the centre and only the dot's start is random:
the policy must still read the dot's position from the pixels (steer left when
it is right of the bar, right when it is left), and no constant action does
better than a mean final distance of 0.5.  ``random_target=True`` also draws
the target, so the CNN must localise two objects; TD3 needs several times more
updates for that than a CPU test can afford (see test_learning.py).
"""
from __future__ import annotations

import numpy as np

SIZE = 84
EPISODE_STEPS = 8
SPEED = 0.25


def column(x: float) -> int:
    return int(round((x + 1) / 2 * (SIZE - 9))) + 4


def render(dot: float, target: float) -> np.ndarray:
    frame = np.zeros((SIZE, SIZE), dtype=np.uint8)
    t = column(target)
    frame[:, t - 1 : t + 2] = 120
    d = column(dot)
    frame[38:46, d - 4 : d + 4] = 255
    return frame


class DotTask:
    def __init__(self, seed: int, random_target: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.random_target = random_target

    def reset(self) -> np.ndarray:
        self.dot, target = self.rng.uniform(-1, 1, size=2)
        self.target = float(target) if self.random_target else 0.0
        self.t = 0
        return render(self.dot, self.target)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        self.dot = float(np.clip(self.dot + SPEED * float(action[0]), -1, 1))
        self.t += 1
        reward = -abs(self.dot - self.target)
        return render(self.dot, self.target), reward, self.t >= EPISODE_STEPS

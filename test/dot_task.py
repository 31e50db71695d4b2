"""A tiny pixel control task for end-to-end learning tests.

An 84x84 image shows a dot (a bright square) and a target (a vertical bar) at
horizontal positions in [-1, 1].  The action's first component moves the dot;
reward is minus the distance to the target.  Solving it needs the CNN to find
both objects, the critic to learn values and the actor to follow the critic.
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
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self) -> np.ndarray:
        self.dot, self.target = self.rng.uniform(-1, 1, size=2)
        self.t = 0
        return render(self.dot, self.target)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        self.dot = float(np.clip(self.dot + SPEED * float(action[0]), -1, 1))
        self.t += 1
        reward = -abs(self.dot - self.target)
        return render(self.dot, self.target), reward, self.t >= EPISODE_STEPS

"""TensorBoard scalars, grouped train/ features/actor/ features/critic/ grad/ q/ reward/ episode/.

Critic metrics exist on every update, actor metrics only on every
``policy_freq``-th one.  Logging "every N updates" would miss the actor whenever
N and policy_freq do not line up (the failed system never logged its actor
loss), so each group is logged at the first update at or after each log point
where that group has values.
"""
from __future__ import annotations

from pathlib import Path

ACTOR_PREFIXES = ("train/actor_", "train/action_", "q/actor_", "features/actor/", "grad/actor_")


def is_actor_metric(key: str) -> bool:
    return key.startswith(ACTOR_PREFIXES)


class ScalarLogger:
    def __init__(self, log_dir: str | Path | None, log_interval: int = 100) -> None:
        self.log_interval = max(1, int(log_interval))
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir), flush_secs=10)
        # update 0 is a log point too: the first update with values is logged, so a run shorter
        # than log_interval updates still has its train/ and actor scalars
        self._pending = {"critic": True, "actor": True}
        self.last: dict[str, float] = {}

    def log_update(self, update: int, metrics: dict[str, float]) -> None:
        if update % self.log_interval == 0:
            self._pending = {"critic": True, "actor": True}
        actor = {k: v for k, v in metrics.items() if is_actor_metric(k)}
        critic = {k: v for k, v in metrics.items() if not is_actor_metric(k)}
        for group, values in (("critic", critic), ("actor", actor)):
            if values and self._pending[group]:
                self.log(update, values)
                self._pending[group] = False

    def log(self, step: int, values: dict[str, float]) -> None:
        self.last.update(values)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

"""TrainingSession without messages: the schedule, evaluation rounds, checkpoints and resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from td3_drive.rl.learner import LearnerConfig
from td3_drive.rl.session import EpisodeEnd, SessionConfig, TrainingSession

LEARNER = LearnerConfig(encoder_mode="shared")
END = EpisodeEnd(total_return=1.5, steps=3, components={"progress": 1.5}, reason="timeout")


class Outbox:
    """What the session handed out through its callables."""

    def __init__(self) -> None:
        self.weights: list[bytes] = []
        self.evaluating: list[tuple[int, bool]] = []
        self.updates: list[int] = []
        self.drops: list[str] = []

    def session(self, tmp_path: Path, vehicles: int = 1, **config) -> TrainingSession:
        base = dict(run_dir=str(tmp_path), batch_size=4, learning_starts=5, replay_capacity=200,
                    checkpoint_every=0, log_interval=1, weights_every=1000)
        return TrainingSession(SessionConfig(**{**base, **config}), LEARNER, vehicles,
                               publish_weights=self.weights.append,
                               on_evaluating=lambda i, flag: self.evaluating.append((i, flag)),
                               on_update=lambda n, metrics: self.updates.append(n),
                               drop=lambda reason, detail: self.drops.append(reason))


def frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (84, 84), dtype=np.uint8), rng.normal(0, 0.3, 53).astype(np.float32)


def drive(session: TrainingSession, steps: int, vehicle: int = 0, seed: int = 0, end: bool = False) -> None:
    """One episode of ``steps`` steps on ``vehicle`` (``end``: the last step ends it)."""
    session.start_stream(vehicle, *frame(seed))
    for k in range(steps):
        last = end and k == steps - 1
        session.record_step(vehicle, np.array([0.0, 0.5], np.float32), 0.1, *frame(seed + k + 1),
                            terminated=False, truncated=last, ended=END if last else None)


def test_updates_follow_learning_starts_and_utd_ratio(tmp_path):
    out = Outbox()
    s = out.session(tmp_path, utd_ratio=0.5)
    s.start()
    assert len(out.weights) == 1  # the initial actor, at once
    drive(s, 4)
    assert s.env_steps == 4 and s.learner.num_updates == 0  # before learning_starts
    drive(s, 8, seed=100)
    assert s.env_steps == 12 and s.learner.num_updates == int((12 - 5 + 1) * 0.5)
    assert out.updates == list(range(1, 5))  # log_interval 1: every update reported


def test_weights_are_broadcast_every_weights_every_updates(tmp_path):
    out = Outbox()
    s = out.session(tmp_path, weights_every=2)
    drive(s, 9)  # learning from step 5: 5 updates
    assert s.learner.num_updates == 5 and len(out.weights) == 2


def test_an_evaluation_round_is_driven_without_noise_and_not_stored(tmp_path):
    out = Outbox()
    s = out.session(tmp_path, learning_starts=10**6, eval_every=2, eval_episodes=1)
    drive(s, 3, end=True)
    drive(s, 3, seed=10, end=True)  # the 2nd training episode: the next one is evaluated
    assert out.evaluating == [(0, True)] and s.evaluating == [True]
    steps, stored = s.env_steps, len(s.replay)
    drive(s, 3, seed=20, end=True)
    assert (s.env_steps, len(s.replay)) == (steps, stored), "evaluation steps are neither counted nor stored"
    assert out.evaluating == [(0, True), (0, False)] and s.eval_returns == [(steps, END.total_return)]
    assert s.episodes == 2 and [r for _, r in s.episode_returns] == [END.total_return] * 2


def test_resume_continues_where_the_checkpoint_left_off(tmp_path):
    out = Outbox()
    s = out.session(tmp_path, checkpoint_replay=True)
    drive(s, 6, end=True)
    drive(s, 4, seed=50)
    s.save_checkpoint()
    weights = {k: v.clone() for k, v in s.learner.actor().state_dict().items()}
    resumed = Outbox().session(tmp_path, checkpoint_replay=True)
    assert resumed.resume()
    assert (resumed.env_steps, resumed.episodes, resumed.episode_returns) == (10, 1, s.episode_returns)
    assert resumed.learner.num_updates == s.learner.num_updates
    assert all(torch.equal(v, resumed.learner.actor().state_dict()[k]) for k, v in weights.items())
    a, b = s.replay.sample_arrays(8), resumed.replay.sample_arrays(8)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_exact_resume_points_are_taken_at_episode_starts(tmp_path):
    out = Outbox()
    s = out.session(tmp_path, checkpoint_episodes=1, checkpoint_replay=True, learning_starts=10**6)
    s.before_episode_start()
    assert s.checkpointer.latest() is None  # no finished episode yet
    drive(s, 3, end=True)
    s.before_episode_start()
    s.before_episode_start()  # the same boundary twice: one checkpoint
    drive(s, 2, seed=9)
    s.save_checkpoint()  # a later, periodic one: not a resume point
    assert len(s.checkpointer.list()) == 2
    resumed = Outbox().session(tmp_path, checkpoint_episodes=1, checkpoint_replay=True)
    assert resumed.resume() and resumed.env_steps == 3 and resumed.episodes == 1


def test_close_keeps_what_was_trained_and_no_more(tmp_path):
    out = Outbox()
    s = out.session(tmp_path)
    s.close()
    assert s.checkpointer.latest() is None  # nothing new: nothing written
    s = out.session(tmp_path / "again")
    drive(s, 7)
    s.close()
    latest = s.checkpointer.latest()
    assert latest is not None and latest.name.endswith("7")


def test_a_poisoned_actor_is_never_broadcast(tmp_path):
    out = Outbox()
    s = out.session(tmp_path)
    with torch.no_grad():
        next(s.learner.actor_head.parameters()).view(-1)[0] = float("nan")
    s.publish_weights()
    assert out.weights == [] and out.drops == ["weights_not_exported_non_finite"]


@pytest.mark.parametrize("config, vehicles", [
    (dict(checkpoint_episodes=1, async_updates=True), 1),
    (dict(checkpoint_episodes=1, replay_on_disk=True), 1),
    (dict(checkpoint_episodes=1), 2),
])
def test_promises_it_cannot_keep_are_refused(tmp_path, config, vehicles):
    with pytest.raises(ValueError, match="checkpoint_episodes"):
        Outbox().session(tmp_path, vehicles, **config)

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


def _slow_learner(session: TrainingSession, monkeypatch, seconds: float = 0.01) -> None:
    """Each update takes ``seconds``: a learner slower than the world (a CPU trainer beside CARLA)."""
    import time

    update = session.learner.update

    def slow(batch):
        time.sleep(seconds)
        return update(batch)

    monkeypatch.setattr(session.learner, "update", slow)


def test_checkpoints_keep_their_schedule_while_a_backlog_drains(tmp_path, monkeypatch):
    """Defect 2: with async_updates the learner drained its whole backlog before it looked at
    checkpoint_every, so a learner behind the world wrote no checkpoint for as long as it was behind."""
    import time

    out = Outbox()
    s = out.session(tmp_path, async_updates=True, checkpoint_every=10)
    _slow_learner(s, monkeypatch)
    saved_at: list[int] = []  # updates done when each checkpoint was written
    save = s.checkpointer.save
    monkeypatch.setattr(s.checkpointer, "save", lambda *a, **k: (saved_at.append(s.learner.num_updates),
                                                                  save(*a, **k))[1])
    drive(s, 60)  # 56 updates owed when the learner starts: about 0.6 s of learning
    s.start()
    owed = s.updates_due() + s.learner.num_updates
    deadline = time.monotonic() + 30
    while s.updates_due() > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.close()
    assert saved_at and saved_at[0] < owed, f"the first checkpoint waited for the whole backlog ({saved_at}, {owed})"


def test_when_caught_up_holds_callbacks_until_the_learner_owes_at_most_max_update_lag(tmp_path, monkeypatch):
    """Defect 2 (back-pressure): an answer per observation, given only when the learner is within
    ``max_update_lag`` updates of utd_ratio; without async_updates always at once."""
    import time

    out = Outbox()
    s = out.session(tmp_path, async_updates=True, max_update_lag=2)
    _slow_learner(s, monkeypatch, 0.02)
    s.start()
    answered: list[int] = []
    drive(s, 30)  # 26 updates owed
    assert s.updates_due() > 2
    s.when_caught_up(0, lambda: answered.append(1))
    s.when_caught_up(0, lambda: answered.append(2))  # the newer tick's answer replaces the older one
    assert answered == []
    deadline = time.monotonic() + 30
    while not answered and time.monotonic() < deadline:
        time.sleep(0.005)
    assert answered == [2] and s.updates_due() <= 2 + 1
    s.when_caught_up(0, lambda: answered.append(3))  # caught up: at once
    assert answered == [2, 3]
    drive(s, 30, seed=50)
    s.when_caught_up(0, lambda: answered.append(4))
    s.close()  # a closing session holds nobody
    assert answered[-1] == 4
    sync = Outbox().session(tmp_path / "sync")
    done: list[int] = []
    drive(sync, 30)
    sync.when_caught_up(0, lambda: done.append(1))
    assert done == [1]
    sync.close()


def test_the_trainer_logs_a_progress_line_every_console_every_updates(tmp_path, caplog):
    """Defect 5: under ros2 launch the trainer was silent on the console (progress only in TensorBoard
    and /diagnostics).  It logs env steps, updates, the episode return and the feature L2."""
    import logging

    from td3_drive.app import config, embedded

    params = config.compose("train", 0, [], {
        "trainer": {"run_dir": str(tmp_path), "device": "cpu", "checkpoint_every": 0, "log_interval": 5,
                    "console_every": 10, "batch_size": 8, "learning_starts": 10},
        "policy": {"device": "cpu", "random_steps": 10}})
    params["trainer"]["reward.max_episode_steps"] = 15  # episodes end in the run (a timeout)
    graph = embedded.build_graph(params)
    with caplog.at_level(logging.INFO, logger="td3_drive"):
        graph.run(45)
    graph.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert len(lines) >= 3, lines
    assert "10 updates" in lines[0] and "env steps" in lines[0] and "critic feature L2" in lines[0]
    assert "episode return" in lines[-1] and "n/a" not in lines[-1]  # an episode ended by then

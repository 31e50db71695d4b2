"""A training session: what the trainer does with scored transitions, ROS-free.

``TrainingSession`` owns the learner, the replay (one stream per vehicle), the
checkpoints and the TensorBoard scalars, and decides *when*: updates per env
step (``learning_starts``, ``utd_ratio``), weight broadcasts (``weights_every``),
checkpoints (``checkpoint_every`` env steps, ``checkpoint_episodes`` exact resume
points), evaluation episodes (``eval_every``), and the rollback after
``rollback_after`` consecutive non-finite updates.  It talks to the outside only
through the callables it is given, so it is tested without messages.

With ``async_updates`` a worker thread learns while the callers add transitions.
``_data_lock`` guards the replay and the counters that describe it (a checkpoint
reads them together); ``_learner_lock`` guards the networks.  Callers take only
``_data_lock``, and nobody holds it for long (no update, no disk write), so adding
a transition never waits for a gradient update or a checkpoint.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from td3_drive.rl.checkpoint import Checkpoint, CheckpointError, Checkpointer
from td3_drive.rl.learner import Learner, LearnerConfig
from td3_drive.rl.replay import ReplayCorrupt, VehicleReplay, batch_to
from td3_drive.rl.scalars import ScalarLogger
from td3_drive.rl.weights import encode_actor
from td3_drive.settings import setting


@dataclass
class SessionConfig:
    """The trainer's schedule, replay and checkpoint parameters (declared under these names)."""

    run_dir: str = setting("runs/latest", "checkpoints and TensorBoard logs go here")
    seed: int = setting(0, "RNG seed of networks, noise and replay sampling")
    total_steps: int = setting(100_000, "env steps of a training run (td3-drive train default)")
    batch_size: int = setting(256, "replay batch size")
    learning_starts: int = setting(1000, "env steps before the first update")
    utd_ratio: float = setting(1.0, "gradient updates per env step")
    weights_every: int = setting(100, "publish actor weights every N updates")
    checkpoint_every: int = setting(5000, "env steps between checkpoints (0: only at exit)")
    eval_every: int = setting(0, "training episodes between evaluation rounds (0: never)")
    eval_episodes: int = setting(1, "episodes per evaluation round")
    log_interval: int = setting(100, "updates between TensorBoard points")
    async_updates: bool = setting(False, "learn in a worker thread (ROS); false = in the callback")
    max_update_lag: int = setting(2, "async_updates: updates the learner may owe before when_caught_up() holds "
                                     "its callbacks (the trainer's learner_ready; back-pressure, docs/ros2.md)")
    replay_capacity: int = setting(100_000, "transitions kept (split between the vehicles)")
    n_step: int = setting(1, "n-step returns")
    replay_on_disk: bool = setting(False, "memory-map the replay buffer under run_dir/replay")
    checkpoint_replay: bool = setting(False, "store the replay buffer in checkpoints")
    checkpoint_keep: int = setting(3, "checkpoints kept")
    checkpoint_episodes: int = setting(0, "checkpoint at the start of every N-th episode with every node's state: "
                                       "exact resume points (0: off; --deterministic sets 1)")
    rollback_after: int = setting(20, "consecutive skipped (non-finite) updates before the learner rolls back to "
                                   "the last good checkpoint (0: never)")

    def check(self, vehicles: int) -> None:
        """Refuse combinations that cannot keep their promise (ValueError)."""
        if self.checkpoint_episodes and self.replay_on_disk and not self.checkpoint_replay:
            raise ValueError("checkpoint_episodes (exact resume points) with replay_on_disk needs "
                             "checkpoint_replay: true (the memmap is flushed at other times than checkpoints)")
        if self.checkpoint_episodes and self.async_updates:
            raise ValueError("checkpoint_episodes (exact resume points) needs async_updates: false")
        if self.checkpoint_episodes and vehicles > 1:
            raise ValueError("checkpoint_episodes (exact resume points) needs one vehicle: with several, "
                             "episodes do not share boundaries")


@dataclass(frozen=True)
class EpisodeEnd:
    """What the session logs of a finished episode."""

    total_return: float
    steps: int
    components: dict[str, float]  # summed per reward term
    reason: str  # collision, off_route, route_completed, timeout, ...


def _ignore(*_: Any) -> None:
    pass


class TrainingSession:
    """Replay + learner + checkpoints for ``vehicles`` streams, and the schedule that runs them.

    ``publish_weights(data)``: actor weight bytes to broadcast.  ``on_evaluating(vehicle, flag)``:
    that vehicle's next episodes are (not) evaluation episodes.  ``on_update(n, metrics)``: after
    every ``log_interval``-th update.  ``drop(reason, detail)``: something not done, counted.
    """

    def __init__(self, config: SessionConfig, learner_config: LearnerConfig, vehicles: int = 1,
                 device: str = "cpu", logger: Any = None,
                 publish_weights: Callable[[bytes], None] = _ignore,
                 on_evaluating: Callable[[int, bool], None] = _ignore,
                 on_update: Callable[[int, dict[str, float]], None] = _ignore,
                 drop: Callable[[str, str], None] = _ignore) -> None:
        config.check(vehicles)
        self.config = config
        self.log = logger or logging.getLogger(__name__)
        self._publish_weights, self._on_evaluating, self._on_update, self._drop = (
            publish_weights, on_evaluating, on_update, drop)
        run_dir = Path(config.run_dir)
        self.learner = Learner(learner_config, device, config.seed)
        self.replay = VehicleReplay(
            vehicles, config.replay_capacity, frame_stack=learner_config.frame_stack,
            state_dim=learner_config.state_dim, action_dim=learner_config.action_dim, n_step=config.n_step,
            gamma=learner_config.gamma, directory=run_dir / "replay" if config.replay_on_disk else None,
            seed=config.seed)
        self.checkpointer = Checkpointer(run_dir / "checkpoints", keep=config.checkpoint_keep)
        self.scalars = ScalarLogger(run_dir / "tensorboard", config.log_interval)
        self._data_lock = threading.Lock()
        self._learner_lock = threading.Lock()

        # training bookkeeping, all vehicles together
        self.env_steps = 0
        self.episodes = 0  # finished training episodes
        self.episode_returns: list[tuple[int, float]] = []  # (env_steps at end, return)
        self.resumed_from: dict[str, Any] | None = None  # the checkpoint resume() continued from, and its counters
        self.eval_returns: list[tuple[int, float]] = []
        self.evaluating = [False] * vehicles  # whether each vehicle drives an evaluation episode
        self._eval_pending = 0  # evaluation episodes due and not started yet
        self.rollbacks = 0
        #: returns {node name: state_dict()} of the other nodes (the embedded app sets it)
        self.node_state_provider: Callable[[], dict[str, Any]] | None = None
        self.resumed_node_states: dict[str, Any] = {}  # from the checkpoint resumed, for the app to apply
        self._boundary_episodes = -1  # finished episodes at the last episode-boundary checkpoint
        self._checkpointed_steps = 0  # env steps at the last checkpoint (close() saves newer ones)
        self._checkpoint_period = 0  # env_steps // checkpoint_every at the last periodic checkpoint
        self._learn_wanted = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        #: per vehicle, the newest callback waiting for the learner to catch up (when_caught_up)
        self._waiting: dict[int, Callable[[], None]] = {}
        self._waiting_lock = threading.Lock()

    def start(self) -> None:
        """Broadcast the current actor, and with ``async_updates`` start the learner thread."""
        self.publish_weights()
        if self.config.async_updates and self._worker is None:
            self._worker = threading.Thread(target=self._learn_loop, name="td3-learner", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ transitions
    def start_stream(self, vehicle: int, frame: np.ndarray, state: np.ndarray) -> None:
        """A new segment of ``vehicle``'s replay stream starts at this observation (evaluation is not stored)."""
        if self.evaluating[vehicle]:
            return
        with self._data_lock:
            self.replay.start_episode(vehicle, frame, state)

    def before_episode_start(self) -> None:
        """Called before anything of a new episode is processed: a resume replays this tick exactly."""
        every = self.config.checkpoint_episodes
        if every and self.episodes and self.episodes != self._boundary_episodes and self.episodes % every == 0:
            self.save_checkpoint(episode_boundary=True)

    def record_step(self, vehicle: int, action: np.ndarray, reward: float, next_frame: np.ndarray,
                    next_state: np.ndarray, terminated: bool, truncated: bool, ended: EpisodeEnd | None = None) -> None:
        """A scored transition of ``vehicle`` (``ended``: the episode it ended, if it did): stored unless
        the vehicle is evaluating, then the updates it makes due."""
        evaluated = self.evaluating[vehicle]
        with self._data_lock:  # the step and its episode's counters: one state for a checkpoint meanwhile
            if not evaluated:
                self.replay.add(vehicle, action, reward, next_frame, next_state, terminated, truncated)
                self.env_steps += 1
            if ended is not None:
                self._count_episode(vehicle, ended.total_return)
        if ended is not None:
            self._end_episode(vehicle, evaluated, ended)
        elif not evaluated:
            self._after_env_step()

    def _count_episode(self, vehicle: int, total_return: float) -> None:
        """Counters of a finished episode, and whether the vehicle's next one is an evaluation (under _data_lock)."""
        if self.evaluating[vehicle]:
            self.eval_returns.append((self.env_steps, total_return))
        else:
            self.episodes += 1
            self.episode_returns.append((self.env_steps, total_return))
            if self.config.eval_every and self.episodes % self.config.eval_every == 0:
                self._eval_pending += self.config.eval_episodes
        self.evaluating[vehicle] = self._eval_pending > 0
        self._eval_pending -= int(self.evaluating[vehicle])

    def _end_episode(self, vehicle: int, evaluated: bool, ended: EpisodeEnd) -> None:
        if evaluated:
            self.scalars.log(self.env_steps, {"eval/return": ended.total_return, "eval/length": ended.steps})
        else:
            per_step = max(1, ended.steps)
            self.scalars.log(self.env_steps, {
                "episode/return": ended.total_return, "episode/length": ended.steps,
                **{f"reward/{k}": v / per_step for k, v in ended.components.items()},
                f"episode/end_{ended.reason}": 1.0})
            self._after_env_step()  # the episode's last training step still gets its updates
        if evaluated != self.evaluating[vehicle]:
            self._on_evaluating(vehicle, self.evaluating[vehicle])
        if self.config.checkpoint_episodes:
            # the policy drives the next episode with exactly the weights a resume would publish
            self.publish_weights()

    # ------------------------------------------------------------------ learning
    def updates_due(self) -> int:
        c = self.config
        if self.env_steps < c.learning_starts or len(self.replay) < c.batch_size:
            return 0
        return int((self.env_steps - c.learning_starts + 1) * c.utd_ratio) - self.learner.num_updates

    def _after_env_step(self) -> None:
        if self.config.async_updates:  # the worker learns and checkpoints; the caller returns at once
            self._learn_wanted.set()
        else:
            self._learn_and_checkpoint()

    def caught_up(self) -> bool:
        """Whether the learner owes at most ``max_update_lag`` updates (always, without async_updates)."""
        return not self.config.async_updates or self.updates_due() <= self.config.max_update_lag

    def when_caught_up(self, vehicle: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` now if :meth:`caught_up`, else from the learner thread once it is (or at close).

        Back-pressure: the trainer answers each observation through this, and the policy holds that
        tick's control until the answer comes, so a world that waits for controls waits for the learner
        too and ``utd_ratio`` holds.  Only ``vehicle``'s newest callback is kept: an answer for a later
        tick answers the earlier ones.
        """
        with self._waiting_lock:
            if not (self.caught_up() or self._stop.is_set()):
                self._waiting[vehicle] = callback
                return
            self._waiting.pop(vehicle, None)
        callback()

    def _release_waiting(self, force: bool = False) -> None:
        with self._waiting_lock:
            if not (force or self.caught_up()) or not self._waiting:
                return
            ready, self._waiting = list(self._waiting.values()), {}
        for callback in ready:
            callback()

    def _learn_and_checkpoint(self) -> None:
        self.learn(self.updates_due())
        self._checkpoint_if_due()

    def _checkpoint_if_due(self) -> None:
        every = self.config.checkpoint_every
        period = self.env_steps // every if every else 0
        if period > self._checkpoint_period:  # every checkpoint_every env steps (any vehicle's)
            self._checkpoint_period = period
            if self.learner.parameters_finite():
                self.save_checkpoint()
            else:  # a poisoned learner is never checkpointed: say so, keep driving, rollback handles it
                self._drop("checkpoint_skipped_non_finite", f"at {self.env_steps} env steps")

    def learn(self, updates: int) -> None:
        """Up to ``updates`` TD3 updates on replay batches (fewer when the session is closing)."""
        c = self.config
        for _ in range(max(0, updates)):
            if self._stop.is_set():  # shutting down: the final checkpoint must not wait for a backlog
                return
            with self._data_lock:
                arrays = self.replay.sample_arrays(c.batch_size)
            batch = batch_to(arrays, self.learner.device)  # the host-to-device copy outside the lock
            with self._learner_lock:
                metrics = self.learner.update(batch)
                if c.rollback_after and self.learner.health.consecutive_bad >= c.rollback_after:
                    self.rollback()
            n = self.learner.num_updates
            self.scalars.log_update(n, metrics)
            if n % c.log_interval == 0:
                self._on_update(n, metrics)
            if n % c.weights_every == 0:
                self.publish_weights()
            if c.async_updates:
                # a backlog must not hold the schedule: checkpoints fall due by env steps while it drains
                self._checkpoint_if_due()
                self._release_waiting()

    def _learn_loop(self) -> None:
        while not self._stop.is_set():
            if self._learn_wanted.wait(timeout=0.5):
                self._learn_wanted.clear()
                self._learn_and_checkpoint()
            self._release_waiting()

    def rollback(self) -> bool:
        """Weights + optimizers back to the newest good checkpoint; update counters stay monotonic."""
        bad, learner = self.learner.health.consecutive_bad, self.learner
        latest = self.checkpointer.latest()
        learner.health.consecutive_bad = 0  # re-arms the trigger; the per-reason skip totals are kept
        if latest is None:
            self.log.error(f"{bad} consecutive updates skipped (non-finite) and no checkpoint in "
                           f"{self.checkpointer.directory} to roll back to: learning continues as is")
            return False
        keep = learner.num_updates, learner.num_actor_updates, dict(learner.health.skipped)
        try:
            self.checkpointer.restore(latest, learner)
        except Exception as exc:  # a failed rollback must not kill training; it is logged loudly
            self.log.error(f"rollback to {latest} failed: {exc}")
            return False
        learner.num_updates, learner.num_actor_updates, learner.health.skipped = keep
        learner.health.consecutive_bad, learner.health.poisoned = 0, False
        self.rollbacks += 1
        self.log.error(f"{bad} consecutive updates skipped (non-finite): rolled back learner weights and "
                       f"optimizers to {latest} (rollback #{self.rollbacks}, update count stays {keep[0]})")
        self.scalars.log(self.env_steps, {"health/rollbacks": float(self.rollbacks)})
        return True

    def publish_weights(self) -> None:
        """Broadcast the actor (never a half-updated one; never a non-finite one: that is counted)."""
        with self._learner_lock:
            if not self.learner.parameters_finite():
                self._drop("weights_not_exported_non_finite", "")
                return
            data = encode_actor(self.learner.actor(), self.learner.num_updates,
                                self.learner.config.actor_architecture())
        self._publish_weights(data)

    # ------------------------------------------------------------------ persistence
    def training_state(self, episode_boundary: bool = False) -> dict[str, Any]:
        state = {"env_steps": self.env_steps, "episodes": self.episodes,  # copies: written after the lock
                 "episode_returns": list(self.episode_returns), "eval_returns": list(self.eval_returns),
                 "vehicles_evaluating": list(self.evaluating), "eval_pending": self._eval_pending,
                 "rollbacks": self.rollbacks, "episode_boundary": episode_boundary,
                 "replay_written": [b.written for b in self.replay.buffers]}
        if episode_boundary and self.node_state_provider is not None:
            state["nodes"] = self.node_state_provider()
        return state

    def save_checkpoint(self, episode_boundary: bool = False) -> Path:
        """``episode_boundary``: called before the first tick of an episode is processed (exact resume point)."""
        with self._data_lock:  # a snapshot: the disk write below does not hold up the callers
            env_steps, state = self.env_steps, self.training_state(episode_boundary)
            replay_state = None
            if self.config.checkpoint_replay:
                replay_state = {k: v.copy() if isinstance(v, np.ndarray) else v
                                for k, v in self.replay.state_dict().items()}
        with self._learner_lock:
            path = self.checkpointer.save(env_steps, self.learner, state, replay_state)
        self.replay.flush()
        self._checkpointed_steps = env_steps
        if episode_boundary:
            self._boundary_episodes = self.episodes
        return path

    def _resume_candidate(self) -> Path | None:
        """The newest verified checkpoint; with ``checkpoint_episodes`` the newest episode-boundary one."""
        if not self.config.checkpoint_episodes:
            return self.checkpointer.latest()
        for path in reversed(self.checkpointer.list()):
            try:
                boundary = json.loads((path / "state.json").read_text())["state"].get("episode_boundary")
            except (OSError, ValueError, KeyError):
                continue
            if boundary and self.checkpointer.verify(path):
                return path
        return None

    def resume(self) -> bool:
        """Continue from the newest usable checkpoint in ``run_dir`` (False: none, starting fresh)."""
        latest = self._resume_candidate()
        if latest is None:
            self.log.info(f"no checkpoint in {self.checkpointer.directory}: starting fresh")
            return False
        checkpoint = self.checkpointer.restore(latest, self.learner)
        try:
            self._restore_training_state(latest, checkpoint)
        except (ReplayCorrupt, KeyError, TypeError, ValueError, AttributeError) as exc:
            # counters or replay that do not fit this run: one error type for whoever resumes
            raise CheckpointError(f"{latest}: training state does not resume: {type(exc).__name__}: {exc}") from exc
        self.log.info(f"resumed from {latest} at {self.env_steps} env steps")
        return True

    def _restore_training_state(self, latest: Path, checkpoint: Checkpoint) -> None:
        """The replay and the counters of a checkpoint whose learner is already restored."""
        replay_state = Checkpointer.replay_state(checkpoint)
        state = checkpoint.state["state"]
        if replay_state is not None:
            self.replay.load_state_dict(replay_state)
        elif self.replay.buffers[0].directory is not None:
            written = [b.written for b in self.replay.buffers]
            if written != state.get("replay_written", written):
                # the memmap was flushed after this checkpoint (or before it, if the run died between
                # the two): learning is fine, but this resume does not repeat the original run exactly
                self.log.warning(f"replay on disk holds {written} observations per vehicle, the checkpoint "
                                 f"{state.get('replay_written')}: kept as is (not an exact resume; "
                                 "checkpoint_replay: true makes one)")
        self.env_steps, self.episodes = state["env_steps"], state["episodes"]
        self._checkpointed_steps = self.env_steps
        every = self.config.checkpoint_every
        self._checkpoint_period = self.env_steps // every if every else 0
        self.episode_returns = [tuple(x) for x in state["episode_returns"]]
        self.eval_returns = [tuple(x) for x in state["eval_returns"]]
        if "vehicles_evaluating" in state:
            evaluating, self._eval_pending = state["vehicles_evaluating"], int(state["eval_pending"])
        else:  # written before scale-out: one vehicle, eval_left counted the running evaluation episode too
            evaluating = [bool(state.get("evaluating", False))]
            self._eval_pending = max(0, int(state.get("eval_left", 0)) - int(evaluating[0]))
        if len(evaluating) == len(self.evaluating):
            self.evaluating = [bool(flag) for flag in evaluating]
        else:  # another vehicle count: all start training, the running evaluation episodes are still owed
            self._eval_pending += sum(bool(flag) for flag in evaluating)
        self.rollbacks = int(state.get("rollbacks", 0))
        self.resumed_node_states = dict(state.get("nodes", {}))
        if state.get("episode_boundary"):
            self._boundary_episodes = self.episodes
        self.resumed_from = {"checkpoint": str(latest), "env_steps": self.env_steps, "episodes": self.episodes,
                             "updates": self.learner.num_updates,
                             "replay_written": [b.written for b in self.replay.buffers]}

    def health(self) -> dict[str, int]:
        """Counters for /diagnostics."""
        return {"env_steps": self.env_steps, "updates": self.learner.num_updates,
                "skipped_updates": self.learner.health.total_skipped, "rollbacks": self.rollbacks}

    def close(self) -> None:
        """Stop learning and keep what was trained: a final checkpoint when anything is newer than the last."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        self._release_waiting(force=True)  # nobody is held up by a session that no longer learns
        if self.env_steps != self._checkpointed_steps and self.learner.parameters_finite():
            try:
                path = self.save_checkpoint()
                self.log.info(f"final checkpoint {path} at {self.env_steps} env steps")
            except Exception as exc:  # shutting down: say it loudly, still close the logs
                self.log.error(f"final checkpoint failed: {exc!r}")
        self.scalars.close()
        self.replay.flush()

"""trainer: bridge topics -> transitions -> replay -> TD3 updates -> actor weights.

One trainer learns from one or several vehicle pipelines (``vehicle_namespaces``)
and broadcasts the actor to all of them.  Per vehicle, transitions are assembled
by stamp (``transitions.TransitionAssembler``): the observation at t, the control
the policy published for t (it may arrive after the observation of t+1), and the
observation, pose and events stamped t+1 (the reward is computed from those).
Each vehicle writes its own replay stream.  Termination (collision, off-route,
route completed) and truncation (timeout) end that vehicle's episode with a
/td3/reset_request in its namespace; whoever owns the world (the embedded
simulator, or the CARLA episode manager) resets it and announces
/td3/episode_start.  Every ``eval_every`` training episodes, ``eval_episodes``
run without exploration noise and without being stored, on the vehicles that
finish an episode next (with several vehicles the others keep training, so the
actor may be updated during an evaluation episode).
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from td3_drive import topics as T
from td3_drive.checkpoint import Checkpointer
from td3_drive.control import WATCHDOG_FRAME_ID, control_to_action
from td3_drive.diagnostics import DropCounter
from td3_drive.inference import resolve_device
from td3_drive.learner import Learner, LearnerConfig
from td3_drive.nodes.common import BridgeWorld, ObservationPairer, declare_topics
from td3_drive.observation import InvalidMessage
from td3_drive.replay import VehicleReplay, batch_to
from td3_drive.reward import COMPONENTS, RewardConfig, RewardFunction
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, NodeContext, dataclass_parameters, stamp
from td3_drive.runtime.messages import seconds
from td3_drive.scalars import ScalarLogger
from td3_drive.transitions import Observation, Restart, Step, TransitionAssembler
from td3_drive.weights import encode_actor

NODE_NAME = "trainer"


def _vehicle_topics(default: T.Topics, namespaces: list[str], roles: list[str]) -> list[T.Topics]:
    """``vehicle_namespaces`` + ``vehicle_role_names`` -> the topics of each vehicle pipeline."""
    if list(namespaces) == [""] and list(roles) in ([""], []):
        return [default]
    if list(roles) in ([""], []):
        roles = [default.role_name] * len(namespaces)
    if len(roles) != len(namespaces):
        raise ValueError(f"vehicle_role_names has {len(roles)} entries, vehicle_namespaces {len(namespaces)}")
    topics = [T.Topics(role or default.role_name, namespace) for role, namespace in zip(roles, namespaces)]
    for what, values in (("namespace", [t.namespace.strip("/") for t in topics]),
                         ("role name", [t.role_name for t in topics])):
        if len(set(values)) != len(values):
            raise ValueError(f"two vehicles share a {what} ({values}): their topics would collide")
    return topics


class Vehicle:
    """One vehicle pipeline as the trainer sees it: its topics, transition chain, episode and stream."""

    def __init__(self, ctx: NodeContext, index: int, topics: T.Topics, trainer: "TrainerNode",
                 max_held: int) -> None:
        self.index, self.topics, self.trainer = index, topics, trainer
        self.label = topics.namespace or topics.role_name
        drops = trainer.drops
        self.world = BridgeWorld(ctx, topics, drops, on_pose=self._on_pose)
        self.chain = TransitionAssembler(max_held=max_held, world_ready=self.world.has_pose_for)
        self.reward_fn = RewardFunction(trainer.reward_config)
        #: the reward is (re)anchored at the pose of the chain's first observation once that pose is
        #: here: "reset" at an episode start, "resync" after a lost step; "" when anchored
        self._anchor = ""
        self._lost_steps = 0  # steps lost since the reward was last anchored (they still take time)
        self._episode_start_s = -np.inf  # events stamped up to here belong to the previous episode
        self.in_episode = False
        self.evaluating = False
        self.episode_return, self.episode_steps = 0.0, 0
        self.episode_components = dict.fromkeys(COMPONENTS, 0.0)
        self.reset_pub = ctx.create_publisher(T.HEADER, topics.reset_request, RELIABLE_QOS)
        self.exploration_pub = ctx.create_publisher(T.BOOL, topics.exploration, LATCHED_QOS)
        self.reward_pub = ctx.create_publisher(T.FLOAT32, topics.reward, RELIABLE_QOS)
        self.observations = ObservationPairer(ctx, topics, trainer.learner.config.frame_stack,
                                              trainer.learner.config.state_dim, self.on_observation, drops)
        ctx.create_subscription(T.CONTROL, topics.control, self.on_control, RELIABLE_QOS)

    # ------------------------------------------------------------------ inputs
    def on_control(self, msg: Any) -> None:
        t = seconds(msg.header.stamp)
        if msg.header.frame_id == WATCHDOG_FRAME_ID:  # the policy was silent: the brake is no action of it
            return self.trainer.drops.drop("watchdog_control", f"{self.label} stamp {t}")
        try:
            action = control_to_action(msg)
        except InvalidMessage as exc:
            self.trainer.drops.drop(exc.reason, str(exc))
            return self._handle(self.chain.action_lost(t))  # do not wait for this stamp's action
        outcomes, reason = self.chain.add_action(t, action)
        if reason:
            self.trainer.drops.drop(reason, f"{self.label} stamp {t}")
        self._handle(outcomes)

    def on_observation(self, stamp_msg: Any, obs: np.ndarray, state: np.ndarray) -> None:
        t = seconds(stamp_msg)
        observation = Observation(t, obs[-1], state)  # the replay stores each frame once, rebuilds stacks
        world = self.world
        if not world.ready and world.pending_start(t):
            return self.trainer.drops.drop("no_pose_or_route", f"{self.label}: episode start before odometry/route")
        if world.waiting_for_route(t):
            return
        if world.starts_episode(t):
            self.trainer.before_episode_start()
            return self._begin_episode(observation)
        if self.in_episode:
            self._handle(self.chain.add_observation(observation))
        # else: waiting for the reset we asked for

    def _on_pose(self) -> None:
        if self.in_episode:  # a step held for its pose can complete now
            self._handle(self.chain.poll())

    # ------------------------------------------------------------------ episode
    def _begin_episode(self, first: Observation) -> None:
        self.in_episode, self._episode_start_s = True, first.stamp
        self.episode_return, self.episode_steps = 0.0, 0
        self.episode_components = dict.fromkeys(COMPONENTS, 0.0)
        self._anchor, self._lost_steps = "reset", 0  # at the pose stamped first.stamp (a teleport's may be late)
        self.trainer.start_stream(self, first)
        self._handle(self.chain.start(first))

    def _handle(self, outcomes: list[Step | Restart]) -> None:
        for outcome in outcomes:
            if not self.in_episode:
                return  # the episode ended on an earlier outcome: the rest belongs to no episode
            if isinstance(outcome, Restart):
                self._restart(outcome.observation, outcome.reason)
            else:
                self._step(outcome)

    def _restart(self, observation: Observation, reason: str, detail: str = "") -> None:
        """The step into ``observation`` is lost: it starts a new replay segment, the reward resyncs."""
        self.trainer.drops.drop(reason, detail or f"{self.label} at {observation.stamp}")
        self._anchor = self._anchor or "resync"  # an episode not yet anchored still needs its reset
        self._lost_steps += 1
        self.trainer.start_stream(self, observation)

    def _step(self, step: Step) -> None:
        """Score a step with the poses stamped at both of its ends; without them it is dropped."""
        t, route = step.next.stamp, self.world.route
        if self._anchor:
            start = self.world.pose_at(step.observation.stamp, exact=True)
            if start is None:
                return self._restart(step.next, "no_pose_at_stamp")
            if self._anchor == "reset":
                # events up to the first tick (the crash before the teleport) are not this episode's,
                # however late they arrived; those of lost steps after it are
                self.world.take_events(until=self._episode_start_s)
                self.reward_fn.reset(start, route)
            if self._lost_steps:
                self.reward_fn.resync(start, route, self._lost_steps)
            self._anchor, self._lost_steps = "", 0
        pose = self.world.pose_at(t, exact=True)
        if pose is None:
            return self._restart(step.next, "no_pose_at_stamp")
        reward = self.reward_fn.step(pose, route, self.world.take_events(until=t))
        if not math.isfinite(reward.total):  # never into the replay (it would refuse it anyway)
            return self._restart(step.next, "non_finite_reward", str(reward.components))
        self.episode_return += reward.total
        self.episode_steps += 1
        for key, value in reward.components.items():
            self.episode_components[key] += value
        self.reward_pub.publish(self.trainer.ctx.new(T.FLOAT32, data=float(reward.total)))
        ended = reward.terminated or reward.truncated
        if ended:
            self.in_episode = False
            self.chain.stop()
            # stamped in this vehicle's simulation time (another CARLA server's clock may differ)
            self.reset_pub.publish(self.trainer.ctx.new(T.HEADER, stamp=stamp(self.trainer.ctx, t),
                                                        frame_id=reward.reason))
        self.trainer.record_step(self, step, reward)

    def publish_exploration(self) -> None:
        """Latched: exploration noise off while this vehicle drives an evaluation episode."""
        self.exploration_pub.publish(self.trainer.ctx.new(T.BOOL, data=not self.evaluating))


class TrainerNode:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        p = ctx.parameter
        self.topics = declare_topics(ctx)
        namespaces = p("vehicle_namespaces", [""], "namespace of each vehicle pipeline this trainer learns from "
                       "([\"\"]: one vehicle, role_name/namespace)")
        roles = p("vehicle_role_names", [""], "CARLA role name of each vehicle, same order ([\"\"]: role_name)")
        self.run_dir = Path(p("run_dir", "runs/latest", "checkpoints and TensorBoard logs go here"))
        self.seed = p("seed", 0, "RNG seed of networks, noise and replay sampling")
        learner_config = dataclass_parameters(ctx, LearnerConfig, "learner")
        for name in ("max_grad_norm_actor", "max_grad_norm_critic"):  # 0 means no clipping
            setattr(learner_config, name, getattr(learner_config, name) or None)
        self.reward_config = dataclass_parameters(ctx, RewardConfig, "reward")
        self.total_steps = p("total_steps", 100_000, "env steps of a training run (td3-drive train default)")
        self.batch_size = p("batch_size", 256, "replay batch size")
        self.learning_starts = p("learning_starts", 1000, "env steps before the first update")
        self.utd_ratio = p("utd_ratio", 1.0, "gradient updates per env step")
        self.weights_every = p("weights_every", 100, "publish actor weights every N updates")
        self.checkpoint_every = p("checkpoint_every", 5000, "env steps between checkpoints (0: only at exit)")
        self.eval_every = p("eval_every", 0, "training episodes between evaluation rounds (0: never)")
        self.eval_episodes = p("eval_episodes", 1, "episodes per evaluation round")
        self.log_interval = p("log_interval", 100, "updates between TensorBoard points")
        self.async_updates = p("async_updates", False, "learn in a worker thread (ROS); false = in the callback")
        max_held = p("max_control_delay", 2, "observations held while the control for an earlier one is late; "
                     "beyond that its step is dropped (missing_action)")
        replay_on_disk = p("replay_on_disk", False, "memory-map the replay buffer under run_dir/replay")
        self.checkpoint_replay = p("checkpoint_replay", False, "store the replay buffer in checkpoints")
        self.checkpoint_episodes = p("checkpoint_episodes", 0, "checkpoint at the start of every N-th episode with "
                                     "every node's state: exact resume points (0: off; --deterministic sets 1)")
        self.rollback_after = p("rollback_after", 20, "consecutive skipped (non-finite) updates before the learner "
                                "rolls back to the last good checkpoint (0: never)")
        vehicle_topics = _vehicle_topics(self.topics, namespaces, roles)
        if self.checkpoint_episodes and replay_on_disk and not self.checkpoint_replay:
            raise ValueError("checkpoint_episodes (exact resume points) with replay_on_disk needs "
                             "checkpoint_replay: true (the memmap is flushed at other times than checkpoints)")
        if self.checkpoint_episodes and self.async_updates:
            raise ValueError("checkpoint_episodes (exact resume points) needs async_updates: false")
        if self.checkpoint_episodes and len(vehicle_topics) > 1:
            raise ValueError("checkpoint_episodes (exact resume points) needs one vehicle: with several, "
                             "episodes do not share boundaries")

        self.learner = Learner(learner_config, resolve_device(p("device", "auto", "auto | cpu | cuda[:N]")), self.seed)
        self.replay = VehicleReplay(
            len(vehicle_topics), p("replay_capacity", 100_000, "transitions kept (split between the vehicles)"),
            frame_stack=learner_config.frame_stack, state_dim=learner_config.state_dim,
            action_dim=learner_config.action_dim, n_step=p("n_step", 1, "n-step returns"), gamma=learner_config.gamma,
            directory=self.run_dir / "replay" if replay_on_disk else None, seed=self.seed)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=p("checkpoint_keep", 3, "checkpoints kept"))
        self.scalars = ScalarLogger(self.run_dir / "tensorboard", self.log_interval)
        self.drops = DropCounter(ctx)
        # with async_updates the worker thread learns while callbacks add transitions.  _data_lock: the
        # replay and the counters that describe it (a checkpoint reads them together); _learner_lock:
        # the networks.  Callbacks take only _data_lock, and nobody holds it for long (no update, no
        # disk write), so a callback never waits for a gradient update or a checkpoint
        self._data_lock = threading.Lock()
        self._learner_lock = threading.Lock()

        # training bookkeeping, all vehicles together
        self.env_steps = 0
        self.episodes = 0  # finished training episodes
        self.episode_returns: list[tuple[int, float]] = []  # (env_steps at end, return)
        self.eval_returns: list[tuple[int, float]] = []
        self._eval_pending = 0  # evaluation episodes due and not started yet
        self.rollbacks = 0
        #: returns {node name: state_dict()} of the other nodes (the embedded app sets it)
        self.node_state_provider: Callable[[], dict[str, Any]] | None = None
        self.resumed_node_states: dict[str, Any] = {}  # from the checkpoint resumed, for the app to apply
        self._boundary_episodes = -1  # finished episodes at the last episode-boundary checkpoint
        self._checkpointed_steps = 0  # env steps at the last checkpoint (close() saves newer ones)
        self._checkpoint_period = 0  # env_steps // checkpoint_every at the last periodic checkpoint

        tp = self.topics
        self.weights_pub = ctx.create_publisher(T.UINT8_ARRAY, tp.actor_weights, LATCHED_QOS)
        self.critic_pubs = {s: ctx.create_publisher(T.FLOAT32, tp.features("critic", s), RELIABLE_QOS)
                            for s in T.FEATURE_STATS}
        self.diagnostics_pub = ctx.create_publisher(T.DIAGNOSTICS, tp.diagnostics, RELIABLE_QOS)
        self.vehicles = [Vehicle(ctx, i, topics, self, max_held) for i, topics in enumerate(vehicle_topics)]
        ctx.create_timer(1.0, self.publish_diagnostics)

        if p("resume", False, "continue from the newest checkpoint in run_dir"):
            self.resume()
        for vehicle in self.vehicles:
            vehicle.publish_exploration()
        self.publish_weights()
        self._learn_wanted = threading.Event()
        self._stop = threading.Event()
        self._worker = None
        if self.async_updates:
            self._worker = threading.Thread(target=self._learn_loop, name="td3-learner", daemon=True)
            self._worker.start()

    @property
    def in_episode(self) -> bool:
        """Whether any vehicle is in an episode."""
        return any(v.in_episode for v in self.vehicles)

    # ------------------------------------------------------------------ transitions (called by Vehicle)
    def start_stream(self, vehicle: Vehicle, first: Observation) -> None:
        """A new segment of ``vehicle``'s replay stream starts at ``first`` (evaluation is not stored)."""
        if vehicle.evaluating:
            return
        with self._data_lock:
            self.replay.start_episode(vehicle.index, first.frame, first.state)

    def before_episode_start(self) -> None:
        if (self.checkpoint_episodes and self.episodes and self.episodes != self._boundary_episodes
                and self.episodes % self.checkpoint_episodes == 0):
            # before anything of the new episode is processed: a resume replays this tick exactly
            self.save_checkpoint(episode_boundary=True)

    def record_step(self, vehicle: Vehicle, step: Step, reward: Any) -> None:
        """A scored transition of ``vehicle``: into its replay stream (unless evaluating), then learn."""
        evaluated, ended = vehicle.evaluating, reward.terminated or reward.truncated
        with self._data_lock:  # the step and its episode's counters: one state for a checkpoint meanwhile
            if not evaluated:
                self.replay.add(vehicle.index, step.action, reward.total, step.next.frame, step.next.state,
                                reward.terminated, reward.truncated)
                self.env_steps += 1
            if ended:
                self._count_episode(vehicle)
        if ended:
            self._end_episode(vehicle, evaluated, reward.reason)
        elif not evaluated:
            self._after_env_step()

    def _count_episode(self, vehicle: Vehicle) -> None:
        """Counters of a finished episode, and whether the vehicle's next one is an evaluation (under _data_lock)."""
        if vehicle.evaluating:
            self.eval_returns.append((self.env_steps, vehicle.episode_return))
        else:
            self.episodes += 1
            self.episode_returns.append((self.env_steps, vehicle.episode_return))
            if self.eval_every and self.episodes % self.eval_every == 0:
                self._eval_pending += self.eval_episodes
        vehicle.evaluating = self._eval_pending > 0
        self._eval_pending -= int(vehicle.evaluating)

    def _end_episode(self, vehicle: Vehicle, evaluated: bool, reason: str) -> None:
        if evaluated:
            self.scalars.log(self.env_steps, {"eval/return": vehicle.episode_return,
                                              "eval/length": vehicle.episode_steps})
        else:
            per_step = max(1, vehicle.episode_steps)
            self.scalars.log(self.env_steps, {
                "episode/return": vehicle.episode_return, "episode/length": vehicle.episode_steps,
                **{f"reward/{k}": v / per_step for k, v in vehicle.episode_components.items()},
                f"episode/end_{reason}": 1.0})
            self._after_env_step()  # the episode's last training step still gets its updates
        if evaluated != vehicle.evaluating:
            vehicle.publish_exploration()
        if self.checkpoint_episodes:
            # the policy drives the next episode with exactly the weights a resume would publish
            self.publish_weights()

    # ------------------------------------------------------------------ learning
    def _updates_due(self) -> int:
        if self.env_steps < self.learning_starts or len(self.replay) < self.batch_size:
            return 0
        return int((self.env_steps - self.learning_starts + 1) * self.utd_ratio) - self.learner.num_updates

    def _after_env_step(self) -> None:
        if self.async_updates:  # the worker learns and checkpoints; this callback returns at once
            self._learn_wanted.set()
        else:
            self._learn_and_checkpoint()

    def _learn_and_checkpoint(self) -> None:
        self.learn(self._updates_due())
        period = self.env_steps // self.checkpoint_every if self.checkpoint_every else 0
        if period > self._checkpoint_period:  # every checkpoint_every env steps (any vehicle's)
            self._checkpoint_period = period
            if self.learner.parameters_finite():
                self.save_checkpoint()
            else:  # a poisoned learner is never checkpointed: say so, keep driving, rollback handles it
                self.drops.drop("checkpoint_skipped_non_finite", f"at {self.env_steps} env steps")

    def learn(self, updates: int) -> None:
        for _ in range(max(0, updates)):
            if self._stop.is_set():  # shutting down: the final checkpoint must not wait for a backlog
                return
            with self._data_lock:
                arrays = self.replay.sample_arrays(self.batch_size)
            batch = batch_to(arrays, self.learner.device)  # the host-to-device copy outside the lock
            with self._learner_lock:
                metrics = self.learner.update(batch)
                if self.rollback_after and self.learner.health.consecutive_bad >= self.rollback_after:
                    self.rollback()
            n = self.learner.num_updates
            self.scalars.log_update(n, metrics)
            if n % self.log_interval == 0:
                for stat, pub in self.critic_pubs.items():
                    key = f"features/critic/{stat}"
                    if key in metrics:
                        pub.publish(self.ctx.new(T.FLOAT32, data=float(metrics[key])))
            if n % self.weights_every == 0:
                self.publish_weights()

    def _learn_loop(self) -> None:
        while not self._stop.is_set():
            if self._learn_wanted.wait(timeout=0.5):
                self._learn_wanted.clear()
                self._learn_and_checkpoint()

    def rollback(self) -> bool:
        """Weights + optimizers back to the newest good checkpoint; update counters stay monotonic."""
        bad, learner = self.learner.health.consecutive_bad, self.learner
        latest = self.checkpointer.latest()
        learner.health.consecutive_bad = 0  # re-arms the trigger; the per-reason skip totals are kept
        if latest is None:
            self.ctx.logger.error(f"{bad} consecutive updates skipped (non-finite) and no checkpoint in "
                                  f"{self.checkpointer.directory} to roll back to: learning continues as is")
            return False
        keep = learner.num_updates, learner.num_actor_updates, dict(learner.health.skipped)
        try:
            self.checkpointer.restore(latest, learner)
        except Exception as exc:  # a failed rollback must not kill training; it is logged loudly
            self.ctx.logger.error(f"rollback to {latest} failed: {exc}")
            return False
        learner.num_updates, learner.num_actor_updates, learner.health.skipped = keep
        learner.health.consecutive_bad, learner.health.poisoned = 0, False
        self.rollbacks += 1
        self.ctx.logger.error(f"{bad} consecutive updates skipped (non-finite): rolled back learner weights and "
                              f"optimizers to {latest} (rollback #{self.rollbacks}, update count stays {keep[0]})")
        self.scalars.log(self.env_steps, {"health/rollbacks": float(self.rollbacks)})
        return True

    def publish_weights(self) -> None:
        with self._learner_lock:  # never a half-updated actor
            if not self.learner.parameters_finite():
                self.drops.drop("weights_not_exported_non_finite")
                return
            data = encode_actor(self.learner.actor(), self.learner.num_updates,
                                self.learner.config.actor_architecture())
        self.weights_pub.publish(self.ctx.new(T.UINT8_ARRAY, data=np.frombuffer(data, dtype=np.uint8)))

    # ------------------------------------------------------------------ persistence
    def training_state(self, episode_boundary: bool = False) -> dict[str, Any]:
        state = {"env_steps": self.env_steps, "episodes": self.episodes,  # copies: written after the lock
                 "episode_returns": list(self.episode_returns), "eval_returns": list(self.eval_returns),
                 "vehicles_evaluating": [v.evaluating for v in self.vehicles], "eval_pending": self._eval_pending,
                 "rollbacks": self.rollbacks, "episode_boundary": episode_boundary,
                 "replay_written": [b.written for b in self.replay.buffers]}
        if episode_boundary and self.node_state_provider is not None:
            state["nodes"] = self.node_state_provider()
        return state

    def save_checkpoint(self, episode_boundary: bool = False) -> Path:
        """``episode_boundary``: called before the first tick of an episode is processed (exact resume point)."""
        with self._data_lock:  # a snapshot: the disk write below does not hold up the callbacks
            env_steps, state = self.env_steps, self.training_state(episode_boundary)
            replay_state = None
            if self.checkpoint_replay:
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
        if not self.checkpoint_episodes:
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
        latest = self._resume_candidate()
        if latest is None:
            self.ctx.logger.info(f"no checkpoint in {self.checkpointer.directory}: starting fresh")
            return False
        checkpoint = self.checkpointer.restore(latest, self.learner)
        replay_state = Checkpointer.replay_state(checkpoint)
        state = checkpoint.state["state"]
        if replay_state is not None:
            self.replay.load_state_dict(replay_state)
        elif self.replay.buffers[0].directory is not None:
            written = [b.written for b in self.replay.buffers]
            if written != state.get("replay_written", written):
                # the memmap was flushed after this checkpoint (or before it, if the run died between
                # the two): learning is fine, but this resume does not repeat the original run exactly
                self.ctx.logger.warning(f"replay on disk holds {written} observations per vehicle, the "
                                        f"checkpoint {state.get('replay_written')}: kept as is (not an exact "
                                        "resume; checkpoint_replay: true makes one)")
        self.env_steps, self.episodes = state["env_steps"], state["episodes"]
        self._checkpointed_steps = self.env_steps
        self._checkpoint_period = self.env_steps // self.checkpoint_every if self.checkpoint_every else 0
        self.episode_returns = [tuple(x) for x in state["episode_returns"]]
        self.eval_returns = [tuple(x) for x in state["eval_returns"]]
        if "vehicles_evaluating" in state:
            evaluating, self._eval_pending = state["vehicles_evaluating"], int(state["eval_pending"])
        else:  # written before scale-out: one vehicle, eval_left counted the running evaluation episode too
            evaluating = [bool(state.get("evaluating", False))]
            self._eval_pending = max(0, int(state.get("eval_left", 0)) - int(evaluating[0]))
        if len(evaluating) == len(self.vehicles):
            for vehicle, flag in zip(self.vehicles, evaluating):
                vehicle.evaluating = bool(flag)
        else:  # another vehicle count: all start training, the running evaluation episodes are still owed
            self._eval_pending += sum(bool(flag) for flag in evaluating)
        self.rollbacks = int(state.get("rollbacks", 0))
        self.resumed_node_states = dict(state.get("nodes", {}))
        if state.get("episode_boundary"):
            self._boundary_episodes = self.episodes
        self.ctx.logger.info(f"resumed from {latest} at {self.env_steps} env steps")
        return True

    def publish_diagnostics(self) -> None:
        self.diagnostics_pub.publish(self.drops.status_message(stamp(self.ctx, self.ctx.now()), {
            "env_steps": self.env_steps, "updates": self.learner.num_updates,
            "skipped_updates": self.learner.health.total_skipped, "rollbacks": self.rollbacks}))

    def close(self) -> None:
        """Stop learning and keep what was trained: a final checkpoint (Ctrl-C under ros2 launch too)."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        if self.env_steps != self._checkpointed_steps and self.learner.parameters_finite():
            try:
                path = self.save_checkpoint()
                self.ctx.logger.info(f"final checkpoint {path} at {self.env_steps} env steps")
            except Exception as exc:  # shutting down: say it loudly, still close the logs
                self.ctx.logger.error(f"final checkpoint failed: {exc!r}")
        self.scalars.close()
        self.replay.flush()

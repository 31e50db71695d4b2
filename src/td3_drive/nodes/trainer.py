"""trainer: bridge topics -> transitions -> replay -> TD3 updates -> actor weights.

Transitions are assembled by stamp: the observation at t, the control the policy
published for t, and the observation, pose and events of t+1 (the reward is
computed from those).  Termination (collision, off-route, route completed) and
truncation (timeout) end the episode with a /td3/reset_request; whoever owns
the world (the embedded simulator, or the CARLA episode manager) resets it and
announces /td3/episode_start.  Every ``eval_every`` episodes, ``eval_episodes``
run without exploration noise and without learning.
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
from td3_drive.control import control_to_action
from td3_drive.diagnostics import DropCounter
from td3_drive.inference import resolve_device
from td3_drive.learner import Learner, LearnerConfig
from td3_drive.nodes.common import BridgeWorld, ObservationPairer, declare_topics
from td3_drive.observation import InvalidMessage
from td3_drive.replay import ReplayBuffer
from td3_drive.reward import COMPONENTS, RewardConfig, RewardFunction
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, NodeContext, dataclass_parameters, stamp
from td3_drive.runtime.messages import seconds
from td3_drive.scalars import ScalarLogger
from td3_drive.weights import encode_actor

NODE_NAME = "trainer"


class TrainerNode:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        p = ctx.parameter
        self.topics = declare_topics(ctx)
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
        replay_on_disk = p("replay_on_disk", False, "memory-map the replay buffer under run_dir/replay")
        self.checkpoint_replay = p("checkpoint_replay", False, "store the replay buffer in checkpoints")
        self.checkpoint_episodes = p("checkpoint_episodes", 0, "checkpoint at the start of every N-th episode with "
                                     "every node's state: exact resume points (0: off; --deterministic sets 1)")
        self.rollback_after = p("rollback_after", 20, "consecutive skipped (non-finite) updates before the learner "
                                "rolls back to the last good checkpoint (0: never)")

        self.learner = Learner(learner_config, resolve_device(p("device", "auto", "auto | cpu | cuda[:N]")), self.seed)
        self.replay = ReplayBuffer(
            p("replay_capacity", 100_000, "transitions kept"), frame_stack=learner_config.frame_stack,
            state_dim=learner_config.state_dim, action_dim=learner_config.action_dim,
            n_step=p("n_step", 1, "n-step returns"), gamma=learner_config.gamma,
            directory=self.run_dir / "replay" if replay_on_disk else None, seed=self.seed)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=p("checkpoint_keep", 3, "checkpoints kept"))
        self.scalars = ScalarLogger(self.run_dir / "tensorboard", self.log_interval)
        self.reward_fn = RewardFunction(self.reward_config)
        self.drops = DropCounter(ctx)
        self._lock = threading.Lock()  # replay + learner, when updates run in a worker thread

        # episode bookkeeping
        self.env_steps = 0
        self.episodes = 0  # finished training episodes
        self.episode_returns: list[tuple[int, float]] = []  # (env_steps at end, return)
        self.eval_returns: list[tuple[int, float]] = []
        self.in_episode = False
        self.evaluating = False
        self._eval_left = 0
        self._episode_return = 0.0
        self._episode_components = dict.fromkeys(COMPONENTS, 0.0)
        self._episode_steps = 0
        self._obs_stamp: float | None = None
        self._action: np.ndarray | None = None
        self.rollbacks = 0
        #: returns {node name: state_dict()} of the other nodes (the embedded app sets it)
        self.node_state_provider: Callable[[], dict[str, Any]] | None = None
        self.resumed_node_states: dict[str, Any] = {}  # from the checkpoint resumed, for the app to apply
        self._boundary_episodes = -1  # finished episodes at the last episode-boundary checkpoint

        tp = self.topics
        self.reset_pub = ctx.create_publisher(T.HEADER, tp.reset_request, RELIABLE_QOS)
        self.weights_pub = ctx.create_publisher(T.UINT8_ARRAY, tp.actor_weights, LATCHED_QOS)
        self.exploration_pub = ctx.create_publisher(T.BOOL, tp.exploration, LATCHED_QOS)
        self.reward_pub = ctx.create_publisher(T.FLOAT32, tp.reward, RELIABLE_QOS)
        self.critic_pubs = {s: ctx.create_publisher(T.FLOAT32, tp.features("critic", s), RELIABLE_QOS)
                            for s in T.FEATURE_STATS}
        self.diagnostics_pub = ctx.create_publisher(T.DIAGNOSTICS, tp.diagnostics, RELIABLE_QOS)
        self.world = BridgeWorld(ctx, tp, self.drops)
        self.observations = ObservationPairer(ctx, tp, learner_config.frame_stack, learner_config.state_dim,
                                              self.on_observation, self.drops)
        ctx.create_subscription(T.CONTROL, tp.control, self.on_control, RELIABLE_QOS)
        ctx.create_timer(1.0, self.publish_diagnostics)

        if p("resume", False, "continue from the newest checkpoint in run_dir"):
            self.resume()
        self.exploration_pub.publish(ctx.new(T.BOOL, data=not self.evaluating))
        self.publish_weights()
        self._learn_wanted = threading.Event()
        self._stop = threading.Event()
        self._worker = None
        if self.async_updates:
            self._worker = threading.Thread(target=self._learn_loop, name="td3-learner", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ transitions
    def on_control(self, msg: Any) -> None:
        if self._obs_stamp is None or seconds(msg.header.stamp) != self._obs_stamp:
            return  # a control for an observation we did not keep (e.g. after termination)
        try:
            action = control_to_action(msg)
        except InvalidMessage as exc:
            return self.drops.drop(exc.reason, str(exc))
        if self._action is not None:  # one action per observation: a second one is not ours to pick
            return self.drops.drop("duplicate_control", f"stamp {self._obs_stamp}")
        self._action = action

    def on_observation(self, stamp_msg: Any, obs: np.ndarray, state: np.ndarray) -> None:
        t = seconds(stamp_msg)
        frame = obs[-1]  # the replay stores each frame once and rebuilds stacks itself
        events = self.world.take_events()
        if not self.world.ready and self.world.pending_start(t):
            return self.drops.drop("no_pose_or_route", "episode start before odometry/route: waiting")
        if self.world.starts_episode(t):
            if (self.checkpoint_episodes and self.episodes and self.episodes != self._boundary_episodes
                    and self.episodes % self.checkpoint_episodes == 0):
                # before anything of the new episode is processed: a resume replays this tick exactly
                self.save_checkpoint(episode_boundary=True)
            self._begin_episode(frame, state)
            self._obs_stamp, self._action = t, None
            return
        if not self.in_episode:
            return  # waiting for the reset we asked for
        if self._action is None or not self.world.ready:
            # the control for the previous observation never came: restart the chain so no
            # transition pairs an observation with someone else's action
            self.drops.drop("missing_action" if self._action is None else "no_pose_or_route")
            if not self.evaluating:
                with self._lock:
                    self.replay.start_episode(frame, state)
            self._obs_stamp, self._action = t, None
            return
        step = self.reward_fn.step(self.world.pose, self.world.route, events)
        if not math.isfinite(step.total):  # never into the replay (it would refuse it anyway)
            self.drops.drop("non_finite_reward", str(step.components))
            if not self.evaluating:
                with self._lock:
                    self.replay.start_episode(frame, state)
            self._obs_stamp, self._action = t, None
            return
        if not self.evaluating:
            with self._lock:
                self.replay.add(self._action, step.total, frame, state, step.terminated, step.truncated)
            self.env_steps += 1
        self._episode_return += step.total
        self._episode_steps += 1
        for key, value in step.components.items():
            self._episode_components[key] += value
        self.reward_pub.publish(self.ctx.new(T.FLOAT32, data=float(step.total)))
        self._obs_stamp, self._action = t, None
        if step.terminated or step.truncated:
            self._end_episode(step.reason)
        elif not self.evaluating:
            self._after_env_step()

    def _begin_episode(self, frame: np.ndarray, state: np.ndarray) -> None:
        self.in_episode = True
        self._episode_return, self._episode_steps = 0.0, 0
        self._episode_components = dict.fromkeys(COMPONENTS, 0.0)
        self.reward_fn.reset(self.world.pose, self.world.route)
        if not self.evaluating:
            with self._lock:
                self.replay.start_episode(frame, state)

    def _end_episode(self, reason: str) -> None:
        self.in_episode = False
        self.reset_pub.publish(self.ctx.new(T.HEADER, stamp=stamp(self.ctx, self.ctx.now()), frame_id=reason))
        if self.evaluating:
            self.eval_returns.append((self.env_steps, self._episode_return))
            self.scalars.log(self.env_steps, {"eval/return": self._episode_return, "eval/length": self._episode_steps})
            self._eval_left -= 1
        else:
            self.episodes += 1
            self.episode_returns.append((self.env_steps, self._episode_return))
            per_step = max(1, self._episode_steps)
            self.scalars.log(self.env_steps, {
                "episode/return": self._episode_return, "episode/length": self._episode_steps,
                **{f"reward/{k}": v / per_step for k, v in self._episode_components.items()},
                f"episode/end_{reason}": 1.0})
            if self.eval_every and self.episodes % self.eval_every == 0:
                self._eval_left = self.eval_episodes
        if not self.evaluating:  # the episode's last training step still gets its updates
            self._after_env_step()
        evaluating = self._eval_left > 0
        if evaluating != self.evaluating:
            self.evaluating = evaluating
            self.exploration_pub.publish(self.ctx.new(T.BOOL, data=not evaluating))
        if self.checkpoint_episodes:
            # the policy drives the next episode with exactly the weights a resume would publish
            self.publish_weights()

    # ------------------------------------------------------------------ learning
    def _updates_due(self) -> int:
        if self.env_steps < self.learning_starts or len(self.replay) < self.batch_size:
            return 0
        return int((self.env_steps - self.learning_starts + 1) * self.utd_ratio) - self.learner.num_updates

    def _after_env_step(self) -> None:
        if self.async_updates:
            self._learn_wanted.set()
        else:
            self.learn(self._updates_due())
        if self.checkpoint_every and self.env_steps % self.checkpoint_every == 0 and self.env_steps:
            if self.learner.parameters_finite():
                self.save_checkpoint()
            else:  # a poisoned learner is never checkpointed: say so, keep driving, rollback handles it
                self.drops.drop("checkpoint_skipped_non_finite", f"at {self.env_steps} env steps")

    def learn(self, updates: int) -> None:
        for _ in range(max(0, updates)):
            with self._lock:
                batch = self.replay.sample(self.batch_size, self.learner.device)
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
                self.learn(self._updates_due())

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
        if not self.learner.parameters_finite():
            self.drops.drop("weights_not_exported_non_finite")
            return
        data = encode_actor(self.learner.actor(), self.learner.num_updates, self.learner.config.actor_architecture())
        self.weights_pub.publish(self.ctx.new(T.UINT8_ARRAY, data=np.frombuffer(data, dtype=np.uint8)))

    # ------------------------------------------------------------------ persistence
    def training_state(self, episode_boundary: bool = False) -> dict[str, Any]:
        state = {"env_steps": self.env_steps, "episodes": self.episodes,
                 "episode_returns": self.episode_returns, "eval_returns": self.eval_returns,
                 "evaluating": self.evaluating, "eval_left": self._eval_left, "rollbacks": self.rollbacks,
                 "episode_boundary": episode_boundary}
        if episode_boundary and self.node_state_provider is not None:
            state["nodes"] = self.node_state_provider()
        return state

    def save_checkpoint(self, episode_boundary: bool = False) -> Path:
        """``episode_boundary``: called before the first tick of an episode is processed (exact resume point)."""
        with self._lock:
            replay_state = self.replay.state_dict() if self.checkpoint_replay else None
            path = self.checkpointer.save(self.env_steps, self.learner, self.training_state(episode_boundary),
                                          replay_state)
        self.replay.flush()
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
        if replay_state is not None:
            self.replay.load_state_dict(replay_state)
        state = checkpoint.state["state"]
        self.env_steps, self.episodes = state["env_steps"], state["episodes"]
        self.episode_returns = [tuple(x) for x in state["episode_returns"]]
        self.eval_returns = [tuple(x) for x in state["eval_returns"]]
        self.evaluating, self._eval_left = bool(state.get("evaluating", False)), int(state.get("eval_left", 0))
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
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        self.scalars.close()
        self.replay.flush()

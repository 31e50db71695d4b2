"""trainer: bridge topics -> transitions -> replay -> TD3 updates -> actor weights.

One trainer learns from one or several vehicle pipelines (``vehicle_namespaces``)
and broadcasts the actor to all of them.  Per vehicle, transitions are assembled
by stamp (``driving.transitions.TransitionAssembler``): the observation at t, the
control the policy published for t (it may arrive after the observation of t+1),
and the observation, pose and events stamped t+1, from which
``driving.episode.EpisodeScorer`` computes the reward.  ``rl.session.TrainingSession``
stores each vehicle's steps in its own replay stream and decides when to learn,
broadcast weights, checkpoint and evaluate; this file only wires them to topics.  Termination (collision, off-route,
route completed) and truncation (timeout) end that vehicle's episode with a
/td3/reset_request in its namespace; whoever owns the world (the embedded
simulator, or the CARLA episode manager) resets it and announces
/td3/episode_start.  Every ``eval_every`` training episodes, ``eval_episodes``
run without exploration noise and without being stored, on the vehicles that
finish an episode next (with several vehicles the others keep training, so the
actor may be updated during an evaluation episode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from td3_drive import topics as T
from td3_drive.driving.control import WATCHDOG_FRAME_ID, control_to_action
from td3_drive.driving.episode import EpisodeScorer, Unscored
from td3_drive.driving.observation import InvalidMessage
from td3_drive.driving.reward import RewardConfig
from td3_drive.driving.transitions import Observation, Restart, Step, TransitionAssembler
from td3_drive.nodes.bridge import BridgeWorld, ObservationPairer
from td3_drive.rl.inference import resolve_device
from td3_drive.rl.learner import LearnerConfig
from td3_drive.rl.session import EpisodeEnd, SessionConfig, TrainingSession
from td3_drive.runtime.diagnostics import DropCounter
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, NodeContext, stamp
from td3_drive.runtime.messages import seconds
from td3_drive.runtime.node import Node
from td3_drive.runtime.ros import run_node
from td3_drive.settings import setting

NODE_NAME = "trainer"


@dataclass
class TrainerConfig:
    """The trainer's own parameters (the schedule is ``SessionConfig``, the networks ``learner.*``)."""

    vehicle_namespaces: list = setting([""], "namespace of each vehicle pipeline this trainer learns from "
                                             "([\"\"]: one vehicle, role_name/namespace)")
    vehicle_role_names: list = setting([""], "CARLA role name of each vehicle, same order ([\"\"]: role_name)")
    max_control_delay: int = setting(2, "observations held while the control for an earlier one is late; beyond "
                                        "that its step is dropped (missing_action)")
    device: str = setting("auto", "auto | cpu | cuda[:N]")
    resume: bool = setting(False, "continue from the newest checkpoint in run_dir")
    console_every: int = setting(500, "log a progress line (env steps, updates, episode return, feature L2) at "
                                      "the first log_interval point at or after every N updates (0: never)")


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
    """One vehicle pipeline as the trainer sees it: its topics, transition chain and episode scoring."""

    def __init__(self, ctx: NodeContext, index: int, topics: T.Topics, session: TrainingSession,
                 drops: DropCounter, reward_config: RewardConfig, max_held: int) -> None:
        self.ctx, self.index, self.topics, self.session, self.drops = ctx, index, topics, session, drops
        self.label = topics.namespace or topics.role_name
        self.world = BridgeWorld(ctx, topics, self.drops, on_pose=self._on_pose)
        # a step is one tick (reward.dt); 1.5 ticks tolerates stamp rounding, not a lost observation
        self.chain = TransitionAssembler(max_held=max_held, world_ready=self.world.has_pose_for,
                                         max_gap=1.5 * reward_config.dt)
        self.scorer = EpisodeScorer(reward_config, self.world)
        self.reset_pub = ctx.create_publisher(T.HEADER, topics.reset_request, RELIABLE_QOS)
        self.exploration_pub = ctx.create_publisher(T.BOOL, topics.exploration, LATCHED_QOS)
        self.reward_pub = ctx.create_publisher(T.FLOAT32, topics.reward, RELIABLE_QOS)
        self.ready_pub = ctx.create_publisher(T.HEADER, topics.learner_ready, RELIABLE_QOS)
        config = self.session.learner.config
        self.observations = ObservationPairer(ctx, topics, config.frame_stack, config.state_dim,
                                              self.on_observation, self.drops)
        ctx.create_subscription(T.CONTROL, topics.control, self.on_control, RELIABLE_QOS)

    @property
    def in_episode(self) -> bool:
        return self.scorer.in_episode

    def on_control(self, msg: Any) -> None:
        t = seconds(msg.header.stamp)
        if msg.header.frame_id == WATCHDOG_FRAME_ID:  # the policy was silent: the brake is no action of it
            return self.drops.drop("watchdog_control", f"{self.label} stamp {t}")
        try:
            action = control_to_action(msg)
        except InvalidMessage as exc:
            self.drops.drop(exc.reason, str(exc))
            return self._handle(self.chain.action_lost(t))  # do not wait for this stamp's action
        outcomes, reason = self.chain.add_action(t, action)
        if reason:
            self.drops.drop(reason, f"{self.label} stamp {t}")
        self._handle(outcomes)

    def on_observation(self, stamp_msg: Any, obs: np.ndarray, state: np.ndarray) -> None:
        self._observe(stamp_msg, obs, state)
        if self.session.config.async_updates:  # (learning in the callback, the world cannot run ahead)
            # back-pressure: this tick's control waits (in the policy) until the learner has caught up
            self.session.when_caught_up(self.index, lambda: self.ready_pub.publish(
                self.ctx.new(T.HEADER, stamp=stamp_msg, frame_id=str(self.session.learner.num_updates))))

    def _observe(self, stamp_msg: Any, obs: np.ndarray, state: np.ndarray) -> None:
        t = seconds(stamp_msg)
        observation = Observation(t, obs[-1], state)  # the replay stores each frame once, rebuilds stacks
        world = self.world
        if not world.ready and world.pending_start(t):
            return self.drops.drop("no_pose_or_route", f"{self.label}: episode start before odometry/route")
        if world.waiting_for_route(t):
            return
        if world.starts_episode(t):
            self.session.before_episode_start()
            self.scorer.begin(t)  # anchored at the pose stamped t (a teleport's may be late)
            self.session.start_stream(self.index, observation.frame, observation.state)
            return self._handle(self.chain.start(observation))
        if self.in_episode:
            self._handle(self.chain.add_observation(observation))
        # else: waiting for the reset we asked for

    def _on_pose(self) -> None:
        if self.in_episode:  # a step held for its pose can complete now
            self._handle(self.chain.poll())

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
        self.drops.drop(reason, detail or f"{self.label} at {observation.stamp}")
        self.scorer.lose_step()
        self.session.start_stream(self.index, observation.frame, observation.state)

    def _step(self, step: Step) -> None:
        reward = self.scorer.score(step.observation.stamp, step.next.stamp)
        if isinstance(reward, Unscored):
            return self._restart(step.next, reward.reason, reward.detail)
        self.reward_pub.publish(self.ctx.new(T.FLOAT32, data=float(reward.total)))
        ended = None
        if not self.scorer.in_episode:
            self.chain.stop()
            # stamped in this vehicle's simulation time (another CARLA server's clock may differ)
            self.reset_pub.publish(self.ctx.new(T.HEADER, stamp=stamp(self.ctx, step.next.stamp),
                                                frame_id=reward.reason))
            s = self.scorer
            ended = EpisodeEnd(s.episode_return, s.episode_steps, dict(s.components), reward.reason)
        self.session.record_step(self.index, step.action, reward.total, step.next.frame, step.next.state,
                                 reward.terminated, reward.truncated, ended)

    def publish_exploration(self, evaluating: bool) -> None:
        """Latched: exploration noise off while this vehicle drives an evaluation episode."""
        self.exploration_pub.publish(self.ctx.new(T.BOOL, data=not evaluating))


class TrainerNode(Node):
    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        wiring = self.declare_config(TrainerConfig)
        config = self.declare_config(SessionConfig)
        learner_config = self.declare_config(LearnerConfig, "learner")
        reward_config = self.declare_config(RewardConfig, "reward")
        vehicle_topics = _vehicle_topics(self.topics, wiring.vehicle_namespaces, wiring.vehicle_role_names)

        tp = self.topics
        self.weights_pub = ctx.create_publisher(T.UINT8_ARRAY, tp.actor_weights, LATCHED_QOS)
        self.critic_pubs = {s: ctx.create_publisher(T.FLOAT32, tp.features("critic", s), RELIABLE_QOS)
                            for s in T.FEATURE_STATS}
        self.session = TrainingSession(
            config, learner_config, len(vehicle_topics), resolve_device(wiring.device), ctx.logger,
            publish_weights=self.publish_weights,
            on_evaluating=lambda i, flag: self.vehicles[i].publish_exploration(flag),
            on_update=self.publish_critic_features, drop=self.drops.drop)
        self.vehicles = [Vehicle(ctx, i, topics, self.session, self.drops, reward_config, wiring.max_control_delay)
                         for i, topics in enumerate(vehicle_topics)]
        self.console_every = wiring.console_every
        self._console_logged = 0  # updates // console_every at the last progress line
        self.publish_diagnostics_every(1.0)
        if wiring.resume:
            self.session.resume()
        for vehicle, evaluating in zip(self.vehicles, self.session.evaluating):
            vehicle.publish_exploration(evaluating)
        self.session.start()

    @property
    def in_episode(self) -> bool:
        """Whether any vehicle is in an episode."""
        return any(v.in_episode for v in self.vehicles)

    def publish_weights(self, data: bytes) -> None:
        self.weights_pub.publish(self.ctx.new(T.UINT8_ARRAY, data=np.frombuffer(data, dtype=np.uint8)))

    def publish_critic_features(self, updates: int, metrics: dict[str, float]) -> None:
        for stat, pub in self.critic_pubs.items():
            key = f"features/critic/{stat}"
            if key in metrics:
                pub.publish(self.ctx.new(T.FLOAT32, data=float(metrics[key])))
        if self.console_every and updates // self.console_every > self._console_logged:
            self._console_logged = updates // self.console_every
            self.ctx.logger.info(progress_line(self.session, updates, metrics))

    def status(self) -> dict[str, Any]:
        return self.session.health()

    def close(self) -> None:
        """Stop learning and keep what was trained: a final checkpoint (Ctrl-C under ros2 launch too)."""
        self.session.close()


def progress_line(session: TrainingSession, updates: int, metrics: dict[str, float]) -> str:
    """One console line (what the embedded progress bar shows): a ros2 launch terminal is not TensorBoard."""
    steps = session.env_steps
    returns = [r for _, r in session.episode_returns[-5:]]
    ret = f"{returns[-1]:.1f} (mean of last {len(returns)}: {np.mean(returns):.1f})" if returns else "n/a"
    l2 = metrics.get("features/critic/l2_norm", float("nan"))
    return (f"progress: {steps} env steps, {updates} updates ({updates / max(1, steps):.2f} per step), "
            f"{session.episodes} episodes, episode return {ret}, critic feature L2 {l2:.2f}")


def main(args: list[str] | None = None) -> int:
    """``ros2 run td3_drive trainer``: this node alone on rclpy."""
    # learning runs in timers of their own; subscriptions keep flowing meanwhile
    return run_node(NODE_NAME, TrainerNode, args=args, parallel_timers=True)

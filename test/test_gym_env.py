"""The Gymnasium environment is the node stack's task: same observations, rewards and episode end."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import td3_drive.sim  # noqa: F401  (registers the environment)
from td3_drive import topics as T
from td3_drive.driving.reward import RewardConfig
from td3_drive.nodes.evaluator import EvaluatorNode
from td3_drive.nodes.preprocessor import CameraPreprocessorNode
from td3_drive.runtime.interface import RELIABLE_QOS
from td3_drive.runtime.local import LocalRuntime
from td3_drive.sim.gym_env import ENV_ID
from td3_drive.sim.node import SimulatorNode
from td3_drive.sim.racetrack import SimConfig
from td3_drive.topics import Topics

SEED = 7
STEPS = 60
SIM = {"random_start": True, "other_vehicles": 2, "image_width": 160, "image_height": 120}


def scripted_actions(n: int) -> np.ndarray:
    """Throttle with a slow steering sweep: the car moves, turns and sees the road change."""
    k = np.arange(n)
    return np.stack([0.3 * np.sin(k / 9.0), np.where(k % 25 < 20, 0.8, -0.2)], axis=1).astype(np.float32)


def through_nodes(actions: np.ndarray, max_steps: int, sim: dict | None = None,
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[float], str]:
    """Simulator -> preprocessor -> a scripted driver; the evaluator scores each step with the reward."""
    runtime = LocalRuntime({"simulator": {**SIM, **(sim or {}), "seed": SEED},  # its first episode (0) runs seed + 0
                            "evaluator": {"reward.max_episode_steps": max_steps}})
    sim = SimulatorNode(runtime.context("simulator"))
    CameraPreprocessorNode(runtime.context("camera_preprocessor"))
    evaluator = EvaluatorNode(runtime.context("evaluator"))
    rewards: list[float] = []
    score = evaluator.reward_fn.step

    def recording_step(*args, **kwargs):
        result = score(*args, **kwargs)
        rewards.append(result.total)
        return result

    evaluator.reward_fn.step = recording_step
    ctx, topics = runtime.context("driver"), Topics()
    images: list[np.ndarray] = []
    states: list[np.ndarray] = []
    control_pub = ctx.create_publisher(T.CONTROL, topics.control, RELIABLE_QOS)

    def on_image(msg):
        images.append(np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, 4, msg.width // 4)
                      .transpose(1, 0, 2).copy())

    def on_state(msg):
        states.append(np.asarray(msg.position, np.float32))
        k = len(states) - 1
        if evaluator.episodes or k >= len(actions):
            return
        steer, pedal = (float(v) for v in actions[k])
        control_pub.publish(ctx.new(T.CONTROL, header=msg.header, steer=steer, throttle=max(pedal, 0.0),
                                    brake=max(-pedal, 0.0)))

    ctx.create_subscription(T.IMAGE, topics.observation_image, on_image, RELIABLE_QOS)
    ctx.create_subscription(T.JOINT_STATE, topics.observation_state, on_state, RELIABLE_QOS)
    sim.start()
    runtime.spin()
    reason = evaluator.episodes[0].end_reason if evaluator.episodes else ""
    return images, states, rewards, reason


def through_gym(actions: np.ndarray, max_steps: int, sim: dict | None = None):
    config = SimConfig(**{**SIM, **(sim or {})})
    env = gym.make(ENV_ID, sim_config=config, reward_config=RewardConfig(max_episode_steps=max_steps))
    obs, info = env.reset(seed=SEED)
    assert info["seed"] == SEED and env.observation_space.contains(obs)
    assert info["hazard"] == ("none" if config.hazard_share == 0.0 else config.hazards)
    images, states, rewards, reason = [obs["image"]], [obs["state"]], [], ""
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        images.append(obs["image"])
        states.append(obs["state"])
        rewards.append(reward)
        if terminated or truncated:
            reason = info["reason"]
            break
    env.close()
    return images, states, rewards, reason


def full_lock(n: int) -> np.ndarray:
    """Throttle at full right lock: the car leaves the route corridor."""
    return np.tile(np.array([[1.0, 0.6]], np.float32), (n, 1))


@pytest.mark.parametrize("script, max_steps, reason, sim", [
    (scripted_actions, 40, "timeout", None),
    (full_lock, 200, "off_route", None),
    (scripted_actions, 40, "timeout", {"hazard_share": 1.0, "hazards": "brake_hold"}),  # the scenario option
])
def test_seeded_episode_is_the_same_through_gymnasium_and_through_the_nodes(script, max_steps, reason, sim):
    actions = script(STEPS + 100)
    g_images, g_states, g_rewards, g_reason = through_gym(actions, max_steps, sim)
    n_images, n_states, n_rewards, n_reason = through_nodes(actions, max_steps, sim)
    n = len(g_rewards)
    assert n >= 10, "the episode must run long enough to compare"
    assert len(n_rewards) == n and g_reason == n_reason == reason
    for k in range(n + 1):
        np.testing.assert_array_equal(g_images[k], n_images[k], err_msg=f"image stack {k}")
        np.testing.assert_allclose(g_states[k], n_states[k], atol=1e-5, err_msg=f"state {k}")
    np.testing.assert_allclose(g_rewards, n_rewards, atol=1e-5)
    assert len({img.tobytes() for img in g_images}) > n // 2, "frames change as the car drives"
    assert abs(sum(g_rewards)) > 0.1 and len(set(np.round(g_rewards, 6))) > n // 2, "rewards vary, not a constant"


def test_spaces_and_protocol_defaults():
    env = gym.make(ENV_ID)
    assert env.observation_space["image"].shape == (4, 84, 84) and env.observation_space["state"].shape == (53,)
    assert env.action_space.shape == (2,) and float(env.action_space.low.min()) == -1.0
    obs, _ = env.reset(seed=3)
    assert obs["image"].dtype == np.uint8 and obs["image"].std() > 0, "a camera frame, not a blank one"
    assert env.unwrapped.sim_config.random_start, "episodes start at random points of the lap"
    env.close()

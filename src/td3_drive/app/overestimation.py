"""`td3-drive overestimation RUN_DIR`: the critic's value estimate against the return received, per checkpoint.

For every checkpoint a run kept (``trainer.checkpoint_every`` env steps apart, the newest
``trainer.checkpoint_keep`` of them), the checkpoint's deterministic actor drives ``episodes``
episodes on fixed simulator seeds (``eval_seed + k``, k = 1..N, the evaluation protocol's
seeds: the same for every checkpoint, agent and seed), and :mod:`td3_drive.rl.overestimation`
compares Q1(s_t, a_t) with the discounted return G_t received from each state, as the TD3
paper's Fig. 1 does.  The result is ``RUN_DIR/overestimation.json``, one row per checkpoint step;
a second call measures only the checkpoints not in it yet.

The task is the run's own (its ``config.yaml`` snapshot): the simulator as it trained, and the
trainer's reward, which is the reward stored in its replay and the one its critic estimates.  The
Gymnasium environment (``sim/gym_env.py``) builds both from the same functions as the nodes
(``test/test_gym_env.py`` checks the equivalence), so the episodes run without a node graph.
Episodes run :func:`~td3_drive.rl.overestimation.settling_horizon` steps past the trainer's time
limit, so every state before the limit has a settled return (the learner bootstraps at the
limit: its Q includes what follows).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from td3_drive.app.config import load_parameters
from td3_drive.app.console import progress_bar
from td3_drive.app.protocol import DEFAULT_EVAL_SEED, Preset
from td3_drive.app.results import write_json
from td3_drive.driving.reward import RewardConfig
from td3_drive.runtime.context import ContextBase
from td3_drive.runtime.interface import dataclass_parameters

#: written into the run directory
RESULT_FILE = "overestimation.json"
#: episodes per checkpoint by default: a few, as the measurement runs for every checkpoint of every run
DEFAULT_EPISODES = Preset.overestimation_episodes


@dataclass(frozen=True)
class Episode:
    """What the actor saw and did in one episode, and the reward it received for each step."""

    obs: np.ndarray  # uint8 (T, frame_stack, H, W)
    state: np.ndarray  # float32 (T, state_dim)
    action: np.ndarray  # float32 (T, action_dim)
    rewards: np.ndarray  # float64 (T,)
    terminated: bool
    seed: int
    hazard: str


def run_task(run_dir: Path) -> tuple[Any, RewardConfig]:
    """(SimConfig, the trainer's RewardConfig) of a run, read from its config.yaml as its nodes read it."""
    from td3_drive.sim.racetrack import SimConfig

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{run_dir} has no config.yaml: not a td3-drive run directory")
    parameters = load_parameters(path)
    sim = dataclass_parameters(ContextBase("simulator", parameters), SimConfig)
    reward = dataclass_parameters(ContextBase("trainer", parameters), RewardConfig, "reward")
    return sim, reward


def drive_episode(env: Any, learner: Any, seed: int) -> Episode:
    """One episode of ``env`` on simulator ``seed`` with the learner's deterministic actor (no noise)."""
    import torch

    observation, info = env.reset(seed=seed)
    obs, state, action, rewards = [], [], [], []
    while True:
        image, vector = observation["image"], observation["state"]
        a = learner.act(torch.from_numpy(image[None]), torch.from_numpy(vector[None])).cpu().numpy()[0]
        obs.append(image)
        state.append(vector)
        action.append(a)
        observation, reward, terminated, truncated, _ = env.step(a)
        rewards.append(reward)
        if terminated or truncated:
            break
    return Episode(np.stack(obs), np.stack(state).astype(np.float32), np.stack(action).astype(np.float32),
                   np.asarray(rewards, dtype=np.float64), bool(terminated), seed, str(info.get("hazard", "")))


def measure_checkpoint(learner: Any, env: Any, seeds: list[int], tail_weight: float,
                       on_episode: Callable[[], Any] | None = None, state_limit: int | None = None) -> dict[str, Any]:
    """Mean Q1 estimate, mean discounted return and bias of ``learner`` over episodes on ``seeds``, over the
    states s_t with t < ``state_limit`` (the training time limit: the states the learner trained on; the
    steps after it only complete their returns), whether the episode terminated or was truncated."""
    from td3_drive.rl.overestimation import EpisodeReturns, ValueBias, discounted_returns, q1_estimates

    gamma = learner.config.gamma
    qs, returns, per_episode = [], [], []
    for seed in seeds:
        episode = drive_episode(env, learner, seed)
        q = q1_estimates(learner, episode.obs, episode.state, episode.action)
        g = discounted_returns(episode.rewards, gamma, episode.terminated, tail_weight)
        if state_limit is not None:  # a late crash must not weigh more states than a time-out
            g = EpisodeReturns(g.returns, g.settled & (np.arange(len(g.settled)) < state_limit))
        qs.append(q)
        returns.append(g)
        per_episode.append({"seed": seed, "hazard": episode.hazard, "steps": len(episode.rewards),
                            "terminated": episode.terminated, "undiscounted_return": float(episode.rewards.sum()),
                            **ValueBias.of([q], [g]).to_dict()})
        if on_episode is not None:
            on_episode()
    return {**ValueBias.of(qs, returns).to_dict(), "per_episode": per_episode}


def _previous(path: Path, setup: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The rows of an earlier measurement with the same setup, by checkpoint step ({} if none fits)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict) or any(earlier.get(k) != v for k, v in setup.items()):
        return {}
    return {int(row["step"]): row for row in earlier.get("checkpoints", [])}


def measure_run(run_dir: str | Path, episodes: int = DEFAULT_EPISODES, eval_seed: int = DEFAULT_EVAL_SEED,
                tail_weight: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure every checkpoint of ``run_dir`` not measured yet; write and return ``overestimation.json``."""
    import torch

    from td3_drive.rl.checkpoint import Checkpointer
    from td3_drive.rl.learner import Learner, LearnerConfig
    from td3_drive.rl.overestimation import TAIL_WEIGHT, settling_horizon
    from td3_drive.sim.gym_env import RacetrackDriveEnv

    run_dir = Path(run_dir)
    if episodes < 1:
        raise SystemExit(f"overestimation needs at least one episode per checkpoint, got {episodes}")
    tail_weight = TAIL_WEIGHT if tail_weight is None else tail_weight
    checkpointer = Checkpointer(run_dir / "checkpoints")
    checkpoints = [p for p in checkpointer.list() if checkpointer.verify(p)]
    if not checkpoints:
        raise SystemExit(f"no verified checkpoint under {run_dir / 'checkpoints'}")
    seeds = [eval_seed + k for k in range(1, episodes + 1)]
    setup = {"episodes": episodes, "eval_seed": eval_seed, "seeds": seeds, "tail_weight": tail_weight}
    out_path = run_dir / RESULT_FILE
    rows = _previous(out_path, setup)
    todo = [p for p in checkpoints if _step(p) not in rows]
    start = time.perf_counter()
    sim_config, reward_config = run_task(run_dir)
    learner = env = None
    bar = progress_bar(len(todo) * episodes, f"overestimation {run_dir.name}", unit="episode") if progress else None
    try:
        # the learner's construction and restore reseed torch's global generator: keep the caller's
        with torch.random.fork_rng(devices=[]):
            for path in todo:
                checkpoint = checkpointer.load(path)
                config = LearnerConfig.from_dict(checkpoint.state["learner"]["learner_config"])
                if learner is None or learner.config != config:
                    learner = Learner(config, "cpu")
                checkpointer.restore(checkpoint, learner)  # the files read and verified once
                if env is None:
                    limit = reward_config.max_episode_steps + settling_horizon(config.gamma, tail_weight)
                    env = RacetrackDriveEnv(sim_config, replace(reward_config, max_episode_steps=limit),
                                            frame_stack=config.frame_stack)
                    setup.update(gamma=config.gamma, training_time_limit=reward_config.max_episode_steps,
                                 episode_steps_limit=limit)
                row = measure_checkpoint(learner, env, seeds, tail_weight, bar.update if bar else None,
                                         state_limit=reward_config.max_episode_steps)
                rows[_step(path)] = {"step": _step(path), "algo": config.algo, "num_q": config.num_q,
                                     "updates": learner.num_updates, **row}
    finally:
        if bar is not None:
            bar.close()
        if env is not None:
            env.close()
    result = {**setup, "run_dir": str(run_dir), "measured_now": len(todo),
              "wall_s": round(time.perf_counter() - start, 2),
              "checkpoints": [rows[step] for step in sorted(rows)]}
    if not todo and out_path.exists():  # nothing new: the file as it is (its gamma and limits included)
        return {**json.loads(out_path.read_text()), "measured_now": 0, "wall_s": result["wall_s"]}
    write_json(result, out_path)
    return result


def _step(checkpoint: Path) -> int:
    """A checkpoint directory's env step (``step_000000002000`` -> 2000)."""
    return int(checkpoint.name.split("_", 1)[1])

"""Value overestimation as the TD3 paper measures it: discounted returns, Q estimates, per-checkpoint JSON, report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from td3_drive.app import overestimation, report
from td3_drive.app.protocol import Preset
from td3_drive.rl.learner import Learner, LearnerConfig
from td3_drive.rl.overestimation import ValueBias, discounted_returns, q1_estimates, settling_horizon

from support import one_torch_thread

#: a short run: learning from tick 30 with batch 8 (tiny preset), a checkpoint every 40 ticks, all kept
TRAIN_STEPS = 120
TRAIN_SET = ["trainer.learning_starts=30", "trainer.batch_size=8", "trainer.utd_ratio=0.25", "trainer.log_interval=2",
             "trainer.weights_every=10", "policy.backend=torch", "trainer.checkpoint_every=40",
             "trainer.checkpoint_keep=10", "trainer.reward.max_episode_steps=25", "policy.random_steps=30"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


# ------------------------------------------------------------------ discounted returns
def test_discounted_returns_of_a_terminated_episode_by_hand():
    g = discounted_returns([1.0, 2.0, 3.0], gamma=0.5, terminated=True)
    # G2 = 3, G1 = 2 + 0.5 * 3 = 3.5, G0 = 1 + 0.5 * 3.5 = 2.75
    np.testing.assert_allclose(g.returns, [2.75, 3.5, 3.0])
    assert g.settled.all()  # nothing follows a terminal state: every return is complete


def test_truncated_episode_leaves_out_the_states_whose_unseen_tail_weighs():
    rewards = [1.0, 0.0, 0.0, 2.0, 1.0]
    # gamma 0.5, tail weight 0.2: 0.5^h <= 0.2 from h = 3 on
    assert settling_horizon(0.5, 0.2) == 3
    g = discounted_returns(rewards, gamma=0.5, terminated=False, tail_weight=0.2)
    # the tail after the time limit is counted 0 (G4 = 1, G3 = 2.5, ... G0 = 1 + 0.125 * 2.5 = 1.3125)
    np.testing.assert_allclose(g.returns, [1.3125, 0.625, 1.25, 2.5, 1.0])
    # s_t's unseen tail weighs 0.5^(5 - t): 1/32, 1/16, 1/8 settle, 1/4 and 1/2 do not
    assert g.settled.tolist() == [True, True, True, False, False]
    terminated = discounted_returns(rewards, gamma=0.5, terminated=True, tail_weight=0.2)
    np.testing.assert_allclose(terminated.returns, g.returns)  # same sums, only the mask differs
    assert terminated.settled.all()


def test_settling_horizon_for_the_learner_gamma():
    h = settling_horizon(0.99, 0.01)
    assert 0.99 ** h <= 0.01 < 0.99 ** (h - 1)


# ------------------------------------------------------------------ Q estimates
def _tiny_learner(**config) -> Learner:
    return Learner(LearnerConfig(hidden=(16, 16), trunk_dim=8, **config), seed=0)


def _episode(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, (n, 4, 84, 84), dtype=np.uint8)
    state = rng.normal(size=(n, 53)).astype(np.float32)
    action = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return obs, state, action


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_q1_estimates_equal_the_critic_forward(algo):
    learner = _tiny_learner(algo=algo)
    obs, state, action = _episode(7)
    q = q1_estimates(learner, obs, state, action, batch_size=3)  # 3 batches, the last one short
    assert q.shape == (7,) and np.isfinite(q).all()
    with torch.no_grad():
        direct = learner.critic_heads(learner.critic_encoder(torch.from_numpy(obs)), torch.from_numpy(state),
                                      torch.from_numpy(action))[0]
    np.testing.assert_allclose(q, direct.numpy().ravel(), rtol=1e-5, atol=1e-5)
    assert learner.critic_heads.training  # eval mode only for the measurement


def test_a_planted_overestimating_critic_shows_its_bias():
    """Q1 + 5 everywhere: the measured bias moves by exactly 5, so the measurement can fail."""
    learner = _tiny_learner()
    obs, state, action = _episode(30)
    rewards = np.random.default_rng(1).normal(size=30)
    returns = discounted_returns(rewards, 0.9, terminated=True)
    honest = ValueBias.of([q1_estimates(learner, obs, state, action)], [returns])
    with torch.no_grad():
        learner.critic_heads.qs[0][-1].bias += 5.0
    inflated = ValueBias.of([q1_estimates(learner, obs, state, action)], [returns])
    assert inflated.bias == pytest.approx(honest.bias + 5.0, abs=1e-4)
    assert inflated.mean_return == honest.mean_return and inflated.states == 30
    # a critic that equals the returns has no bias
    exact = ValueBias.of([returns.returns], [returns])
    assert exact.bias == pytest.approx(0.0)


def test_value_bias_pools_only_settled_states():
    settled = discounted_returns([1.0, 1.0, 1.0, 1.0], 0.5, terminated=False, tail_weight=0.2)  # 2 settle
    q = np.array([100.0, 100.0, -1e6, -1e6])  # the unsettled states' estimates must not count
    bias = ValueBias.of([q], [settled])
    assert bias.states == 2 and bias.mean_q == 100.0
    assert bias.mean_return == pytest.approx(np.mean(settled.returns[:2]))
    none = ValueBias.of([np.zeros(1)], [discounted_returns([1.0], 0.99, terminated=False)])
    assert none.states == 0 and math.isnan(none.bias)


# ------------------------------------------------------------------ a run, measured per checkpoint
@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    from td3_drive.app.train import TrainOptions, train

    run_dir = tmp_path_factory.mktemp("run")
    train(TrainOptions(run_dir=run_dir, config="train", steps=TRAIN_STEPS, seed=0, overrides=TRAIN_SET, bag=False))
    return run_dir


def test_measure_run_writes_one_row_per_checkpoint(short_run):
    result = overestimation.measure_run(short_run, episodes=1, tail_weight=0.5, progress=False)
    written = json.loads((short_run / overestimation.RESULT_FILE).read_text())
    steps = [row["step"] for row in written["checkpoints"]]
    kept = sorted(int(p.name.split("_")[1]) for p in (short_run / "checkpoints").glob("step_*"))
    # every 40 env steps, and the final one at exit (env steps: ticks less the episodes' first ticks)
    assert kept[:2] == [40, 80] and len(kept) == 3 and 80 < kept[2] <= TRAIN_STEPS
    assert steps == kept == [row["step"] for row in result["checkpoints"]]
    assert written["seeds"] == [1_000_001] and written["gamma"] == pytest.approx(0.99)
    # episodes run past the training time limit (25) by the settling horizon, so the states before it settle
    assert written["episode_steps_limit"] == 25 + settling_horizon(0.99, 0.5)
    for row in written["checkpoints"]:
        assert row["algo"] == "td3" and row["episodes"] == 1 and row["states"] > 0
        assert math.isfinite(row["mean_q"]) and math.isfinite(row["mean_return"])
        assert row["bias"] == pytest.approx(row["mean_q"] - row["mean_return"])
        assert row["per_episode"][0]["seed"] == 1_000_001
        # only the states the learner trained on (t < the training time limit), however the episode ended
        assert row["states"] <= 25
    # three checkpoints, three learners: each row measured its own checkpoint
    assert len({row["updates"] for row in written["checkpoints"]}) == 3
    # a second call finds every checkpoint measured, measures nothing and says so; the file stays as it was
    again = overestimation.measure_run(short_run, episodes=1, tail_weight=0.5, progress=False)
    assert again["checkpoints"] == written["checkpoints"] and again["measured_now"] == 0
    assert json.loads((short_run / overestimation.RESULT_FILE).read_text())["measured_now"] == 3
    with pytest.raises(SystemExit, match="at least one episode"):
        overestimation.measure_run(short_run, episodes=0, progress=False)


def test_a_final_checkpoint_is_placed_on_the_checkpoint_grid_only_when_just_short_of_it():
    from td3_drive.app.report import _on_grid

    assert _on_grid(9981, 2000) == 10000  # a 10000-step run's exit checkpoint, a few env steps short
    assert _on_grid(6996, 2000) == 6996  # a 7000-step run's: not 6000, where the run has a checkpoint already
    assert _on_grid(4000, 2000) == 4000 and _on_grid(117, 0) == 117


def test_cli_overestimation(short_run, tmp_path, capsys):
    from td3_drive.app import cli

    assert cli.main(["overestimation", str(short_run), "--episodes", "1", "--tail-weight", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["command"] == "overestimation" and summary["checkpoints"] == 3
    assert Path(summary["file"]) == short_run / overestimation.RESULT_FILE


# ------------------------------------------------------------------ the report's section
def _fabricated(run_dir: Path, biases: list[float], algo: str) -> None:
    rows = [{"step": step, "algo": algo, "mean_q": 10.0 + b, "mean_return": 10.0, "bias": b, "states": 100,
             "episodes": 2} for step, b in zip((1000, 2000), biases)]
    run_dir.mkdir(parents=True)
    (run_dir / overestimation.RESULT_FILE).write_text(json.dumps({"gamma": 0.99, "checkpoints": rows}))


def test_report_section_from_fabricated_measurements(tmp_path):
    runs = {"td3_ln": [tmp_path / "td3_ln" / "seed_0", tmp_path / "td3_ln" / "seed_1"],
            "ddpg": [tmp_path / "ddpg" / "seed_0", tmp_path / "ddpg" / "seed_1"]}
    _fabricated(runs["td3_ln"][0], [1.0, 2.0], "td3")
    _fabricated(runs["td3_ln"][1], [3.0, 4.0], "td3")
    _fabricated(runs["ddpg"][0], [20.0, 40.0], "ddpg")  # ddpg seed 1: never measured
    labels = {"td3_ln": "TD3 + LayerNorm", "ddpg": "DDPG"}
    curves = report.overestimation_curves(runs)
    assert curves["td3_ln"]["step"] == [1000, 2000]
    assert curves["td3_ln"]["bias"] == [2.0, 3.0] and curves["td3_ln"]["seeds"] == [2, 2]  # mean over seeds
    assert curves["td3_ln"]["mean_q"] == [12.0, 13.0] and curves["td3_ln"]["mean_return"] == [10.0, 10.0]
    assert curves["ddpg"]["bias"] == [20.0, 40.0] and curves["ddpg"]["seeds"] == [1, 1]
    assert curves["ddpg"]["missing"] == [str(runs["ddpg"][1])]
    lines = "\n".join(report.overestimation_markdown(curves, labels, "overestimation.png"))
    assert "## Value overestimation (TD3 vs DDPG)" in lines
    assert "| DDPG | 2000 | 1 | 50 | 10 | 40 |" in lines
    assert "| TD3 + LayerNorm | 1000 | 2 | 12 | 10 | 2 |" in lines
    assert "missing" in lines and str(runs["ddpg"][1]) in lines
    report.plot_overestimation(curves, labels, tmp_path / "overestimation.png")
    assert (tmp_path / "overestimation.png").stat().st_size > 1000


def test_report_says_missing_when_no_run_was_measured(tmp_path):
    runs = {"td3_ln": [tmp_path / "a"], "ddpg": [tmp_path / "b"]}
    curves = report.overestimation_curves(runs)
    lines = "\n".join(report.overestimation_markdown(curves, {"td3_ln": "TD3", "ddpg": "DDPG"}, None))
    assert "## Value overestimation (TD3 vs DDPG)" in lines
    assert lines.count("missing") >= 2 and "| TD3 |" not in lines


def test_presets_keep_the_checkpoints_the_measurement_needs():
    from td3_drive.app.protocol import load_preset

    preset = load_preset("cpu-hazards")
    every = [int(s.split("=")[1]) for s in preset.train_set if s.startswith("trainer.checkpoint_every=")]
    keep = [int(s.split("=")[1]) for s in preset.train_set if s.startswith("trainer.checkpoint_keep=")]
    assert every and every[0] > 0 and keep and keep[0] >= preset.steps // every[0]
    assert preset.overestimation_episodes > 0 and Preset(name="x").overestimation_episodes > 0

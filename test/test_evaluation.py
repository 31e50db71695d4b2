"""`td3-drive eval` and `td3-drive compare --preset tiny`: every report file, non-empty plots, one row per agent."""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from td3_drive.app import cli, protocol, report

from support import one_torch_thread

REPORT_FILES = ["report.md", "metrics.csv", "metrics.json", "episodes.csv", "episodes.json", "stats.csv",
                "stats.json", "curves.json", "health.json", *(f"{name}.png" for name in report.PLOTS)]
AGENTS = [*protocol.AGENTS, protocol.PID, protocol.PRIVILEGED]


def _cli(argv: list[str]) -> dict:
    """cli.main in-process; the JSON summary is the last stdout line."""
    buffer = io.StringIO()
    patch = pytest.MonkeyPatch()
    patch.setattr(sys, "stdout", buffer)
    try:
        assert cli.main(argv) == 0
    finally:
        patch.undo()
    return json.loads(buffer.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compare") / "report"
    return out, _cli(["compare", "--preset", "tiny", "--out", str(out)])


def _png_pixels(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    return mpimg.imread(str(path))


def test_compare_writes_every_report_file(compared):
    out, summary = compared
    assert summary["command"] == "compare" and summary["trained"] == 6 and summary["reused"] == 0
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    for name in report.PLOTS:
        assert f"({name}.png)" in md  # the report embeds every plot
    for agent in protocol.AGENTS:
        for seed in (0, 1):
            assert (out / "runs" / agent / f"seed_{seed}" / "tensorboard").is_dir()
            assert (out / "eval" / agent / f"seed_{seed}" / "episodes.csv").is_file()
    assert (out / "eval" / "pid" / "episodes.json").is_file()
    assert (out / "eval" / "privileged" / "episodes.json").is_file()


def test_compare_measures_value_overestimation_of_every_run(compared):
    out, _ = compared
    for agent in protocol.AGENTS:
        for seed in (0, 1):
            measured = json.loads((out / "runs" / agent / f"seed_{seed}" / "overestimation.json").read_text())
            assert len(measured["checkpoints"]) == 1 and measured["episodes"] == 1  # tiny: the final checkpoint
            assert measured["checkpoints"][0]["algo"] == ("ddpg" if agent == "ddpg" else "td3")
    md = (out / "report.md").read_text()
    assert "## Value overestimation (TD3 vs DDPG)" in md and "(overestimation.png)" in md
    assert "missing" not in md.split("## Value overestimation")[1].split("## ")[0]
    assert (out / "overestimation.png").stat().st_size > 0


def test_compare_reports_each_runs_feature_norm_and_saturation(compared):
    """Issue 26's health targets per run: feature L2 < 100 at every logged step, no saturated actor at the end."""
    out, _ = compared
    health = json.loads((out / "health.json").read_text())
    assert sorted((r["agent"], r["run"]) for r in health) == sorted(
        (agent, f"seed_{seed}") for agent in protocol.AGENTS for seed in (0, 1))
    for row in health:
        assert 0 < row["max_actor_feature_l2"] and 0 < row["max_critic_feature_l2"]
        assert 0 <= row["final_saturated_fraction"] <= 1 and isinstance(row["healthy"], bool)
    md = (out / "report.md").read_text()
    assert "### Run health" in md and md.count("| seed_") >= len(health)


def test_run_health_flags_exploding_features_and_says_when_a_run_logged_nothing(tmp_path):
    rows = [{"agent": "td3_no_ln", "run": "seed_0", "max_actor_feature_l2": 1.2e12, "max_critic_feature_l2": 40.0,
             "final_saturated_fraction": 0.1, "healthy": False}]
    rows += report.run_health({"ddpg": [tmp_path / "seed_9"]})  # no tensorboard dir: no data, not a crash
    assert rows[1]["healthy"] is None and rows[1]["max_actor_feature_l2"] is None
    md = "\n".join(report.health_markdown(rows, {"td3_no_ln": "TD3 without LayerNorm"}))
    assert "| TD3 without LayerNorm | seed_0 | 1.200e+12 | 40 | 0.1 | **no** |" in md
    assert "| ddpg | seed_9 | n/a | n/a | n/a | no data |" in md


def test_compare_embeds_one_evaluation_episode_per_agent(compared):
    from td3_drive.app.video import read_frames

    out, _ = compared
    md = (out / "report.md").read_text()
    for agent in AGENTS:
        gif = out / "video" / f"{agent}.gif"
        assert f"(video/{agent}.gif)" in md
        frames = read_frames(gif)
        assert len(frames) > 3 and float(np.std(frames[-1])) > 10, agent  # a drive, not a blank image


def test_compare_plots_are_non_empty_images(compared):
    out, _ = compared
    for name in report.PLOTS:
        path = out / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 5_000 < path.stat().st_size < 200_000, (name, path.stat().st_size)
        pixels = _png_pixels(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert float(pixels[..., :3].std()) > 0.02, name  # not a blank canvas
        assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20, name  # lines, text, bands


def test_metrics_table_has_a_row_per_agent(compared):
    out, _ = compared
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["agent"] for r in rows] == AGENTS
    for column in ("success_rate", "route_completion", "collisions_per_km", "lane_invasions_per_km", "mean_speed",
                   "rms_lateral_deviation", "rms_longitudinal_jerk", "return"):
        assert column in rows[0], column
    by_agent = {r["agent"]: r for r in rows}
    assert int(by_agent["pid"]["runs"]) == 1 and int(by_agent["td3_ln"]["runs"]) == 2
    assert all(int(r["episodes"]) >= 1 for r in rows)
    md = (out / "report.md").read_text()
    for label in ("TD3 + LayerNorm", "DDPG", "TD3 without LayerNorm", "PID + Pure Pursuit"):
        assert label in md


def test_same_evaluation_seeds_for_every_agent(compared):
    out, _ = compared
    episodes = json.loads((out / "episodes.json").read_text())
    seeds = {}
    for row in episodes:
        seeds.setdefault(row["agent"], set()).add(row["seed"])
    assert set(seeds) == set(AGENTS)
    assert len({frozenset(s) for s in seeds.values()}) == 1, seeds


def test_mann_whitney_pairs(compared):
    out, _ = compared
    tests = json.loads((out / "stats.json").read_text())
    pairs = {(t["metric"], t["a"], t["b"]) for t in tests}
    n = len(AGENTS)
    assert len(pairs) == 2 * n * (n - 1) // 2
    assert {t["metric"] for t in tests} == {"return", "route_completion"}


def test_curves_cover_every_agent_and_encoder(compared):
    out, _ = compared
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves) == set(protocol.AGENTS)
    for agent, tags in curves.items():
        for tag in ("episode/return", "features/actor/l2_norm", "features/critic/l2_norm", "train/critic_loss"):
            assert tag in tags, (agent, tag)
            assert any(v is not None for v in tags[tag]["mean"]), (agent, tag)


def test_compare_reuses_finished_runs(compared, tmp_path):
    out, _ = compared
    # --no-train: every run exists, so nothing is trained; only the PID evaluation + one agent re-run.
    # A run without train_summary.json (trained elsewhere) is taken as it is too.
    (out / "runs" / "td3_no_ln" / "seed_1" / "train_summary.json").unlink()
    summary = _cli(["compare", "--preset", "tiny", "--runs", str(out / "runs"), "--out", str(tmp_path / "again"),
                    "--agents", "td3_no_ln", "--no-train"])
    assert summary["trained"] == 0 and summary["reused"] == 2
    assert (tmp_path / "again" / "report.md").is_file()


def test_eval_checkpoint_and_pid(compared, tmp_path):
    out, _ = compared
    run = out / "runs" / "td3_no_ln" / "seed_0"  # the ablation: policy.layer_norm comes from the checkpoint
    common = ["--episodes", "2", "--eval-seed", "77", "--max-ticks", "400", "--set",
              "evaluator.reward.max_episode_steps=15", "--set", "policy.backend=torch"]
    summaries = {}
    for name, extra in (("ckpt", ["--checkpoint", str(run)]), ("pid", ["--controller", "pid"])):
        summaries[name] = s = _cli(["eval", *extra, *common, "--out", str(tmp_path / name)])
        assert s["command"] == "eval" and s["episodes"] == 2 and s["seeds"] == [78, 79]
        data = json.loads((tmp_path / name / "episodes.json").read_text())
        assert len(data["episodes"]) == 2 and data["summary"]["n"] == 2
        with (tmp_path / name / "episodes.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 and {"return", "route_completion", "collisions_per_km", "seed"} <= set(rows[0])
        assert all(math.isfinite(float(r["return"])) for r in rows)
    assert summaries["ckpt"]["controller"] == "policy" and summaries["pid"]["controller"] == "pid"


def test_presets_load():
    for name in ("tiny", "cpu-small", "cpu-hazards", "paper"):
        preset = protocol.load_preset(name)
        assert preset.name == name and preset.agents == list(protocol.AGENTS)
    assert len(protocol.load_preset("cpu-small").seeds) >= 3
    assert protocol.load_preset("cpu-small").protocol().hazard_share == 0.0  # the earlier, clean protocol
    hazards = protocol.load_preset("cpu-hazards")
    assert len(hazards.seeds) >= 5 and hazards.protocol() == protocol.Protocol()  # the default protocol
    paper = protocol.load_preset("paper")
    assert paper.steps == 1_000_000 and len(paper.seeds) >= 5 and paper.eval_episodes >= 20


def test_aggregate_ci_and_mann_whitney_units():
    grid = np.array([0.0, 1.0, 2.0, 3.0])
    agg = report.aggregate([(np.array([0.0, 3.0]), np.array([0.0, 3.0])),
                            (np.array([1.0, 3.0]), np.array([2.0, 4.0]))], grid)
    assert agg["n"].tolist() == [1, 2, 2, 2]
    assert agg["mean"][0] == 0.0 and math.isnan(agg["lo"][0])  # one seed: no interval
    assert agg["mean"][3] == pytest.approx(3.5)
    from scipy import stats

    half = stats.t.ppf(0.975, 1) * np.std([3.0, 4.0], ddof=1) / math.sqrt(2)
    assert agg["hi"][3] == pytest.approx(3.5 + half)
    rows = {"a": [{"return": 1.0, "route_completion": 0.1}] * 4, "b": [{"return": 2.0, "route_completion": 0.2}] * 4}
    (ret, rc) = report.mann_whitney(rows)
    assert ret["U"] == 0.0 and ret["prob_a_greater"] == 0.0 and ret["p"] < 0.05 and rc["metric"] == "route_completion"


def test_metrics_csv_recomputed_from_episodes_json(compared):
    """Every agent's row is what its episodes say: success = successes / episodes, route completion
    the mean, collisions per km pooled over the distance driven."""
    out, _ = compared
    episodes = json.loads((out / "episodes.json").read_text())
    with (out / "metrics.csv").open() as f:
        rows = {r["agent"]: r for r in csv.DictReader(f)}
    for agent, row in rows.items():
        mine = [e for e in episodes if e["agent"] == agent]
        assert int(row["episodes"]) == len(mine) > 0
        assert float(row["success_rate"]) == pytest.approx(np.mean([bool(e["success"]) for e in mine]))
        assert float(row["route_completion"]) == pytest.approx(np.mean([e["route_completion"] for e in mine]))
        assert float(row["return"]) == pytest.approx(np.mean([e["return"] for e in mine]))
        km = sum(e["distance_m"] for e in mine) / 1000.0
        if km > 0.1:
            assert float(row["collisions_per_km"]) == pytest.approx(sum(e["collisions"] for e in mine) / km)


def test_holm_correction_step_down_and_monotone():
    """Holm: sort the p-values, multiply the i-th smallest by (m - i), keep it monotone, cap at 1."""
    from td3_drive.app.report import _holm

    block = [{"p": p} for p in (0.04, 0.01, 0.03, math.nan, 0.5)]
    _holm(block)
    assert [r["p_holm"] for r in block[:3]] == pytest.approx([0.09, 0.04, 0.09])  # p 0.04: max(0.09, 0.04*2); 0.01*4; 0.03*3
    assert math.isnan(block[3]["p_holm"]) and block[4]["p_holm"] == pytest.approx(0.5)
    single = [{"p": 0.7}]
    _holm(single)
    assert single[0]["p_holm"] == 0.7
    capped = [{"p": 0.4}, {"p": 0.6}]
    _holm(capped)
    assert [r["p_holm"] for r in capped] == [0.8, 0.8]


def test_compare_ranks_agents_with_iqm_and_probability_of_improvement(compared):
    out, _ = compared
    ranks = json.loads((out / "ranking.json").read_text())
    assert set(ranks["agents"]) == set(AGENTS)
    assert ranks["agents"]["td3_ln"]["runs"] == 2 and ranks["agents"]["pid"]["runs"] == 1
    for r in ranks["agents"].values():
        lo, hi = r["iqm_ci95"]
        assert lo <= r["iqm"] <= hi and 0.0 <= lo and hi <= 1.0
    assert [(p["x"], p["y"]) for p in ranks["probability_of_improvement"]] == [("td3_ln", "ddpg"),
                                                                               ("td3_ln", "td3_no_ln")]
    assert "## Ranking: IQM and probability of improvement" in (out / "report.md").read_text()


def test_rliable_estimators():
    from scipy.stats import trim_mean

    from td3_drive.app.ranking import iqm, probability_of_improvement, stratified_bootstrap_ci

    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(7, 2))
    assert iqm(scores) == pytest.approx(trim_mean(scores.ravel(), 0.25))
    assert iqm(np.array([[0.0], [1.0], [1.0], [1.0], [100.0]])) == pytest.approx(1.0), "one outlier run is trimmed"
    better = scores + 1.0
    assert probability_of_improvement(better, scores) == 1.0 and probability_of_improvement(scores, better) == 0.0
    assert probability_of_improvement(scores, scores) == pytest.approx(0.5)  # ties and symmetry
    # per task, then averaged: X wins task 0 always, loses task 1 always
    x, y = np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])
    assert probability_of_improvement(x, y) == 0.5
    point, lo, hi = stratified_bootstrap_ci(iqm, scores, reps=500)
    assert lo < point < hi and hi - lo < 1.0
    same = stratified_bootstrap_ci(iqm, np.full((5, 2), 0.7), reps=100)
    assert same == pytest.approx((0.7, 0.7, 0.7)), "no spread, no interval"
    assert stratified_bootstrap_ci(iqm, scores, reps=200, seed=3) == stratified_bootstrap_ci(iqm, scores, reps=200,
                                                                                             seed=3)

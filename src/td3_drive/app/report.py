"""The `td3-drive compare` report: curves from TensorBoard, metrics table, Mann-Whitney U tests, report.md.

Curves: every run's TensorBoard scalars are read back with EventAccumulator.
``episode/return`` is logged at env steps; the learner's scalars (losses, Q,
feature norms) at update counts, mapped to env steps with the run's
config snapshot: update u happens at env step ``learning_starts - 1 + ceil(u / utd_ratio)``
(``rl.session.TrainingSession.updates_due``).  Each seed's curve is linearly interpolated on a
common grid (inside the range that seed covers, never extrapolated); the band
is the 95 % t-interval of the mean across seeds (mean +- t(0.975, n-1) * sd / sqrt(n)), computed on
log10 values for the log-scale panels (feature norms, critic loss).

Value overestimation (TD3 paper, Fig. 1): each run's ``overestimation.json``
(:mod:`td3_drive.app.overestimation`), averaged over seeds per checkpoint; a run without one is
named as missing.

Tests: per-episode values pooled over the training seeds x evaluation episodes,
two-sided Mann-Whitney U between every pair of agents (classical included),
with Holm's correction per metric.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from td3_drive.app import overestimation
from td3_drive.app.config import load_parameters
from td3_drive.app.protocol import AGENTS, Preset
from td3_drive.app.ranking import iqm, probability_of_improvement, stratified_bootstrap_ci
from td3_drive.app.results import EvalResult, write_csv, write_json
from td3_drive.driving.metrics import EpisodeMetrics, summarize, summarize_by
from td3_drive.runtime.parameters import for_node

#: (TensorBoard tag, y label) per panel, by plot file
CURVES: dict[str, list[tuple[str, str]]] = {
    "learning_curves": [("episode/return", "episode return (training)")],
    "feature_l2": [("features/actor/l2_norm", "actor encoder feature L2"),
                   ("features/critic/l2_norm", "critic encoder feature L2")],
    "losses": [("train/critic_loss", "critic loss"), ("train/actor_loss", "actor loss")],
    "q_values": [("q/q1", "Q1(s, a) on replay batch"), ("q/actor_q", "Q(s, pi(s)) (actor objective)")],
}
LOG_SCALE = {"features/actor/l2_norm": "log", "features/critic/l2_norm": "log", "train/critic_loss": "log"}
RETURN_WINDOW = 5  # trailing mean over this many episodes before interpolation
TESTED = ("return", "route_completion")
PLOTS = ("learning_curves", "feature_l2", "losses", "q_values", "eval_distributions")
COLORS = {"td3_ln": "tab:blue", "ddpg": "tab:orange", "td3_no_ln": "tab:red", "pid": "tab:gray",
          "privileged": "tab:green"}


#: issue 26's health targets, checked per run: feature L2 below this at every logged step ...
FEATURE_L2_LIMIT = 100.0
#: ... and at the end, less than this share of the actor's action components at |a| > 0.99 (learner.SATURATED)
SATURATED_LIMIT = 0.5
HEALTH_TAGS = ["features/actor/l2_norm", "features/critic/l2_norm", "train/action_saturated_fraction"]


# ------------------------------------------------------------------ reading runs
def run_scalars(run_dir: Path, tags: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (env steps, values) for one run; learner tags mapped from updates to env steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    available = set(acc.Tags().get("scalars", []))
    learning_starts, utd = _update_schedule(run_dir)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag in tags:
        if tag not in available:
            continue
        events = acc.Scalars(tag)
        steps = np.array([e.step for e in events], dtype=np.float64)
        values = np.array([e.value for e in events], dtype=np.float64)
        if not tag.startswith(("episode/", "eval/", "reward/")):
            steps = learning_starts - 1 + np.ceil(steps / utd)
        order = np.argsort(steps, kind="stable")
        out[tag] = (steps[order], values[order])
    return out


def _trainer_parameters(run_dir: Path) -> dict[str, Any]:
    """The trainer's parameters from a run's config.yaml snapshot ({} if there is none)."""
    path = run_dir / "config.yaml"
    return for_node(load_parameters(path), "trainer") if path.exists() else {}


def _update_schedule(run_dir: Path) -> tuple[float, float]:
    trainer = _trainer_parameters(run_dir)
    return float(trainer.get("learning_starts", 1000)), float(trainer.get("utd_ratio", 1.0)) or 1.0


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, 95 % t-interval and n across seeds on ``grid`` (NaN where < 1 seed covers a point)."""
    from scipy import stats

    table = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        keep = np.isfinite(y)
        x, y = x[keep], y[keep]
        if len(x) == 0:
            continue
        inside = (grid >= x[0]) & (grid <= x[-1])
        table[i, inside] = np.interp(grid[inside], x, y)
    n = np.isfinite(table).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(table, axis=0) / np.maximum(n, 1), np.nan)
        sd = np.array([np.nanstd(table[:, j], ddof=1) if n[j] > 1 else np.nan for j in range(len(grid))])
        half = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1)), np.nan)
    return {"step": grid, "mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def _aggregate_tag(tag: str, curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> dict[str, np.ndarray]:
    """aggregate(); on log-scale tags in log10 space (geometric mean, multiplicative interval: never <= 0)."""
    if LOG_SCALE.get(tag) != "log":
        return aggregate(curves, grid)
    with np.errstate(divide="ignore", invalid="ignore"):
        agg = aggregate([(x, np.where(y > 0, np.log10(y), np.nan)) for x, y in curves], grid)
    return {k: (v if k in ("step", "n") else 10.0 ** v) for k, v in agg.items()}


# ------------------------------------------------------------------ plots
def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 3.6), squeeze=False)
    return plt, fig, axes[0]


def plot_curves(name: str, curves: dict[str, dict[str, dict[str, np.ndarray]]], labels: dict[str, str],
                path: Path) -> None:
    """One panel per tag of CURVES[name]; a line (mean) and band (95 % CI) per agent."""
    plt, fig, axes = _figure(len(CURVES[name]))
    for ax, (tag, ylabel) in zip(axes, CURVES[name]):
        drawn = False
        for agent, by_tag in curves.items():
            agg = by_tag.get(tag)
            if agg is None or not np.isfinite(agg["mean"]).any():
                continue
            color = COLORS.get(agent)
            ax.plot(agg["step"], agg["mean"], color=color, label=labels.get(agent, agent), lw=1.5,
                    marker="." if np.isfinite(agg["mean"]).sum() < 3 else None)
            ax.fill_between(agg["step"], agg["lo"], agg["hi"], color=color, alpha=0.2, lw=0)
            drawn = True
        scale = LOG_SCALE.get(tag)
        if drawn and scale:
            ax.set_yscale(scale)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel + (f" ({scale})" if scale else ""))
        ax.grid(True, alpha=0.3, which="both")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{name.replace('_', ' ')}: mean and 95% CI across seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_distributions(rows: dict[str, list[dict[str, Any]]], labels: dict[str, str], path: Path) -> None:
    """Per-episode evaluation return and route completion per agent (box + points)."""
    plt, fig, axes = _figure(len(TESTED))
    agents = list(rows)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, TESTED):
        data = [np.array([float(r[metric]) for r in rows[a]], dtype=np.float64) for a in agents]
        data = [d[np.isfinite(d)] for d in data]
        positions = np.arange(1, len(agents) + 1)
        ax.boxplot([d if len(d) else [np.nan] for d in data], positions=positions, widths=0.5, showfliers=False)
        for pos, agent, d in zip(positions, agents, data):
            ax.scatter(pos + rng.uniform(-0.12, 0.12, len(d)), d, s=12, color=COLORS.get(agent, "k"), alpha=0.7)
        ax.set_xticks(positions, [labels.get(a, a).split(" (")[0] for a in agents], rotation=15, fontsize=7)
        ax.set_ylabel(f"evaluation {metric.replace('_', ' ')}")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("evaluation episodes (same seeds for every agent)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------ value overestimation
OVERESTIMATION_PLOT = "overestimation.png"


def _checkpoint_grid(run_dir: Path) -> int:
    """The run's ``checkpoint_every`` (0 if unknown): the last checkpoint, written at exit a few env steps
    short of a multiple of it (episode starts are ticks without a transition), is placed on that multiple."""
    try:
        return int(_trainer_parameters(run_dir).get("checkpoint_every", 0))
    except (OSError, ValueError, TypeError):
        return 0


#: how far below a multiple of checkpoint_every a final checkpoint may land and still count as on it
GRID_SNAP = 0.05


def _on_grid(step: int, grid: int) -> int:
    """``step`` moved up to the next multiple of ``grid`` when it is just short of it (the final checkpoint of
    a run whose length is such a multiple); any other step stays where it is."""
    if grid <= 0 or step % grid == 0:
        return step
    below = grid - step % grid
    return step + below if below <= GRID_SNAP * grid else step


def overestimation_curves(runs: dict[str, list[Path]]) -> dict[str, dict[str, Any]]:
    """Per agent and checkpoint step: mean Q estimate, mean discounted return and bias, each the mean over
    the seeds measured at that step; ``missing``: the run dirs without an ``overestimation.json``."""
    curves = {}
    for agent, run_dirs in runs.items():
        by_step: dict[int, list[dict[str, Any]]] = {}
        missing = []
        for run_dir in run_dirs:
            path = run_dir / overestimation.RESULT_FILE
            if not path.is_file():
                missing.append(str(run_dir))
                continue
            grid = _checkpoint_grid(run_dir)
            taken: set[int] = set()  # one row per run and step: a run never counts as two seeds
            for row in json.loads(path.read_text()).get("checkpoints", []):
                step = _on_grid(int(row["step"]), grid)
                step = int(row["step"]) if step in taken else step
                taken.add(step)
                by_step.setdefault(step, []).append(row)
        steps = sorted(by_step)

        def mean(key: str) -> list[float]:
            return [float(np.nanmean([float(r[key]) if r[key] is not None else math.nan for r in by_step[s]]))
                    for s in steps]

        curves[agent] = {"step": steps, "seeds": [len(by_step[s]) for s in steps], "mean_q": mean("mean_q"),
                         "mean_return": mean("mean_return"), "bias": mean("bias"), "missing": missing}
    return curves


def plot_overestimation(curves: dict[str, dict[str, Any]], labels: dict[str, str], path: Path) -> None:
    """As the TD3 paper's Fig. 1: per agent the Q estimate (solid) and the true return (dashed); the bias."""
    plt, fig, axes = _figure(2)
    for agent, c in curves.items():
        if not c["step"]:
            continue
        color, label = COLORS.get(agent), labels.get(agent, agent)
        marker = "." if len(c["step"]) < 3 else None
        axes[0].plot(c["step"], c["mean_q"], color=color, lw=1.5, marker=marker, label=f"{label}: estimate")
        axes[0].plot(c["step"], c["mean_return"], color=color, lw=1.5, ls="--", marker=marker,
                     label=f"{label}: true")
        axes[1].plot(c["step"], c["bias"], color=color, lw=1.5, marker=marker, label=label)
    axes[1].axhline(0.0, color="k", lw=0.8)
    for ax, ylabel in zip(axes, ("average value (Q1 estimate / discounted return)", "bias = estimate - true")):
        ax.set_xlabel("env steps (checkpoint)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("value overestimation at evaluation states: mean over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def overestimation_markdown(curves: dict[str, dict[str, Any]], labels: dict[str, str],
                            plot: str | None) -> list[str]:
    """The report's section: the measurement, the figure, a table per agent and checkpoint, what is missing."""
    lines = ["## Value overestimation (TD3 vs DDPG)", "",
             "As the TD3 paper measures it (Fujimoto et al. 2018, Fig. 1): at every kept checkpoint the "
             "deterministic actor drives a few fixed-seed episodes of the run's own training task; at each state "
             "the critic's estimate Q1(s, a) is set against the discounted return actually received from there "
             "(the trainer's reward and gamma), both averaged over the states. States whose return a time limit "
             "cut off (the unseen rest weighing more than 1 %) are left out. Bias = estimate - true; positive "
             "overestimates. Values are means over the seeds measured at that checkpoint "
             "(`overestimation.json` in each run dir; `td3-drive overestimation RUN_DIR` measures one run).", ""]
    if plot:
        lines += [f"![value overestimation]({plot})", ""]
    rows = [(agent, c) for agent, c in curves.items() if c["step"]]
    if rows:
        lines += ["| agent | env steps | seeds | Q1 estimate | true discounted return | bias |",
                  "|---|---|---|---|---|---|"]
        for agent, c in rows:
            for i, step in enumerate(c["step"]):
                lines.append(f"| {labels.get(agent, agent)} | {step} | {c['seeds'][i]} | {_fmt(c['mean_q'][i])} | "
                             f"{_fmt(c['mean_return'][i])} | {_fmt(c['bias'][i])} |")
        lines.append("")
    for agent, c in curves.items():
        if c["missing"]:
            lines.append(f"- {labels.get(agent, agent)}: measurement missing for {len(c['missing'])} run(s): "
                         + ", ".join(f"`{d}`" for d in c["missing"]))
    if any(c["missing"] for c in curves.values()):
        lines.append("")
    return lines


# ------------------------------------------------------------------ tables and tests
def run_health(runs: dict[str, list[Path]]) -> list[dict[str, Any]]:
    """Per run: the largest logged actor / critic feature L2, and the saturated share of the actor's actions
    at the end (mean of its last 5 logged values); ``healthy`` = below both limits."""
    rows = []
    for agent, run_dirs in runs.items():
        for run_dir in run_dirs:
            scalars = run_scalars(run_dir, HEALTH_TAGS) if (run_dir / "tensorboard").is_dir() else {}
            peak = {tag: float(np.max(v)) if len(v) else None for tag, (_, v) in scalars.items()}
            saturated = scalars.get("train/action_saturated_fraction")
            row = {"agent": agent, "run": run_dir.name,
                   "max_actor_feature_l2": peak.get("features/actor/l2_norm"),
                   "max_critic_feature_l2": peak.get("features/critic/l2_norm"),
                   "final_saturated_fraction": float(np.mean(saturated[1][-5:])) if saturated else None}
            values = [row["max_actor_feature_l2"], row["max_critic_feature_l2"], row["final_saturated_fraction"]]
            row["healthy"] = None if None in values else bool(
                max(values[:2]) < FEATURE_L2_LIMIT and values[2] < SATURATED_LIMIT)
            rows.append(row)
    return rows


def health_markdown(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    lines = ["### Run health", "",
             f"Per run: the largest encoder feature L2 at any logged step (target < {FEATURE_L2_LIMIT:.0f}) and the "
             f"share of the actor's action components at |a| > 0.99 at the end of training (mean of the last 5 "
             f"logged batches; target < {SATURATED_LIMIT}). 'no data': the run logged no such scalar.", "",
             "| agent | run | max actor feature L2 | max critic feature L2 | saturated at the end | healthy |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "no data" if r["healthy"] is None else ("yes" if r["healthy"] else "**no**")
        lines.append(f"| {labels.get(r['agent'], r['agent'])} | {r['run']} | {_fmt(r['max_actor_feature_l2'])} | "
                     f"{_fmt(r['max_critic_feature_l2'])} | {_fmt(r['final_saturated_fraction'])} | {verdict} |")
    return lines + [""]


def metrics_table(rows: dict[str, list[dict[str, Any]]], evals: dict[str, list[EvalResult]],
                  labels: dict[str, str]) -> list[dict[str, Any]]:
    """One row per agent (classical included): summarize() over the pooled episodes + per-seed spread."""
    table = []
    for agent, episodes in rows.items():
        row: dict[str, Any] = {"agent": agent, "label": labels.get(agent, agent), "runs": len(evals[agent]),
                               "episodes": len(episodes)}
        if episodes:
            s = summarize([EpisodeMetrics.from_dict(r) for r in episodes])
            m = s["metrics"]
            returns = np.array([r["return"] for r in episodes], dtype=np.float64)
            per_seed = [np.mean([r["return"] for r in e.episodes]) for e in evals[agent] if e.episodes]
            row.update({
                "success_rate": s["success_rate"], "success_ci95_lo": s["success_rate_ci95"][0],
                "success_ci95_hi": s["success_rate_ci95"][1],
                "route_completion": m["route_completion"]["mean"], "route_completion_std": m["route_completion"]["std"],
                "collisions_per_km": s["collisions_per_km_pooled"],
                "lane_invasions_per_km": s["lane_invasions_per_km_pooled"],
                "mean_speed": m["mean_speed"]["mean"], "rms_lateral_deviation": m["rms_lateral_deviation"]["mean"],
                "rms_longitudinal_jerk": m["rms_longitudinal_jerk"]["mean"],
                "max_lateral_acceleration": m["max_lateral_acceleration"]["mean"],
                "distance_m": m["distance_m"]["mean"], "return": float(returns.mean()),
                "return_std": float(returns.std(ddof=1)) if len(returns) > 1 else math.nan,
                "return_seed_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan,
                "end_reasons": ";".join(f"{k}:{v}" for k, v in sorted(s["end_reasons"].items())),
                **_split_by_hazard(episodes),
            })
        table.append(row)
    return table


def _split_by_hazard(episodes: list[dict[str, Any]]) -> dict[str, float]:
    """Success on clean and on hazard episodes, and the mean minimum time to collision on hazard episodes."""
    labels = [r.get("hazard", "") for r in episodes]
    by = summarize_by([EpisodeMetrics.from_dict(r) for r in episodes], labels)
    hazard = by.get("hazard")
    return {"success_clean": by["none"]["success_rate"] if "none" in by else math.nan,
            "success_hazard": hazard["success_rate"] if hazard else math.nan,
            "hazard_episodes": hazard["n"] if hazard else 0,
            "min_ttc_hazard_s": hazard["metrics"]["min_ttc_s"]["mean"] if hazard else math.nan}


#: the tasks of the ranking: each run's success rate on these episodes of the protocol
RANKING_TASKS = ("none", "hazard")


def run_scores(results: list[EvalResult]) -> np.ndarray:
    """(runs x tasks) success rates, one row per training run: clean and hazard episodes (NaN-free: a task
    a run has no episode of is left out for every run)."""
    table = []
    for result in results:
        by = result.meta.get("by_hazard") or summarize_by(
            [EpisodeMetrics.from_dict(r) for r in result.episodes], [r.get("hazard", "") for r in result.episodes])
        table.append([by[t]["success_rate"] if t in by else math.nan for t in RANKING_TASKS])
    scores = np.array(table, dtype=np.float64).reshape(len(table), len(RANKING_TASKS))
    return scores[:, ~np.isnan(scores).any(axis=0)]


def ranking(evals: dict[str, list[EvalResult]], learners: list[str], reps: int = 2000) -> dict[str, Any]:
    """IQM of per-run success with its stratified-bootstrap 95 % CI per agent, and the probability of
    improvement of the first learner over each other learner (rliable's estimators, app/ranking.py)."""
    scores = {agent: run_scores(results) for agent, results in evals.items() if results}
    agents = {}
    for agent, m in scores.items():
        point, lo, hi = stratified_bootstrap_ci(iqm, m, reps=reps) if m.size else (math.nan,) * 3
        agents[agent] = {"iqm": point, "iqm_ci95": [lo, hi], "runs": int(m.shape[0]),
                         "per_run": m.tolist(), "tasks": list(RANKING_TASKS[: m.shape[1]])}
    improvement = []
    if learners and learners[0] in scores:
        first = learners[0]
        for other in learners[1:]:
            if other in scores and scores[other].shape[1] == scores[first].shape[1] and scores[first].size:
                point, lo, hi = stratified_bootstrap_ci(probability_of_improvement, scores[first], scores[other],
                                                        reps=reps)
                improvement.append({"x": first, "y": other, "p": point, "ci95": [lo, hi]})
    return {"agents": agents, "probability_of_improvement": improvement}


def mann_whitney(rows: dict[str, list[dict[str, Any]]], metrics: tuple[str, ...] = TESTED) -> list[dict[str, Any]]:
    """Two-sided Mann-Whitney U for every pair of agents and metric; Holm-adjusted p per metric."""
    from scipy.stats import mannwhitneyu

    out = []
    for metric in metrics:
        block = []
        for a, b in itertools.combinations(rows, 2):
            x = np.array([float(r[metric]) for r in rows[a]], dtype=np.float64)
            y = np.array([float(r[metric]) for r in rows[b]], dtype=np.float64)
            x, y = x[np.isfinite(x)], y[np.isfinite(y)]
            u = p = math.nan
            if len(x) and len(y):
                try:
                    res = mannwhitneyu(x, y, alternative="two-sided")
                    u, p = float(res.statistic), float(res.pvalue)
                except ValueError:
                    pass
            block.append({"metric": metric, "a": a, "b": b, "n_a": len(x), "n_b": len(y),
                          "median_a": float(np.median(x)) if len(x) else math.nan,
                          "median_b": float(np.median(y)) if len(y) else math.nan, "U": u, "p": p,
                          # P(a > b) + 0.5 P(a = b): 0.5 = no difference
                          "prob_a_greater": u / (len(x) * len(y)) if len(x) and len(y) and math.isfinite(u) else math.nan})
        _holm(block)
        out += block
    return out


def _holm(block: list[dict[str, Any]]) -> None:
    valid = sorted((r for r in block if math.isfinite(r["p"])), key=lambda r: r["p"])
    running = 0.0
    for i, r in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - i) * r["p"]))
        r["p_holm"] = running
    for r in block:
        r.setdefault("p_holm", math.nan)


# ------------------------------------------------------------------ markdown
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def _ranking_markdown(labels: dict[str, str], ranks: dict[str, Any]) -> list[str]:
    lines = ["## Ranking: IQM and probability of improvement", "",
             "A score is one run's success rate on the clean and on the hazard episodes; per agent the "
             "interquartile mean (IQM) over runs x tasks, with a 95 % stratified-bootstrap CI (runs resampled "
             "within each task, 2000 draws), as rliable (Agarwal et al. 2021) computes it. Per-run scores "
             "(clean, hazard) beside it. With the classical drivers' single run the CI is a point.", "",
             "| agent | runs | IQM of success [95 % CI] | per run (clean, hazard) |", "|---|---|---|---|"]
    for agent, r in ranks["agents"].items():
        per_run = "; ".join("(" + ", ".join(_fmt(v, 2) for v in run) + ")" for run in r["per_run"])
        lines.append(f"| {labels.get(agent, agent)} | {r['runs']} | {_fmt(r['iqm'], 2)} "
                     f"[{_fmt(r['iqm_ci95'][0], 2)}, {_fmt(r['iqm_ci95'][1], 2)}] | {per_run} |")
    if ranks["probability_of_improvement"]:
        lines += ["", "| P(X > Y) | X | Y | 95 % CI |", "|---|---|---|---|"]
        for p in ranks["probability_of_improvement"]:
            lines.append(f"| {_fmt(p['p'], 2)} | {labels.get(p['x'], p['x'])} | {labels.get(p['y'], p['y'])} | "
                         f"[{_fmt(p['ci95'][0], 2)}, {_fmt(p['ci95'][1], 2)}] |")
    return lines + [""]


def _markdown(preset: Preset, labels: dict[str, str], table: list[dict[str, Any]], tests: list[dict[str, Any]],
              meta: dict[str, Any], plots: dict[str, str], ranks: dict[str, Any],
              overestimation_section: list[str], health_section: list[str]) -> str:
    seeds = ", ".join(map(str, preset.seeds))
    lines = [
        f"# TD3 + LayerNorm vs DDPG vs TD3 without LayerNorm vs classical: `{preset.name}` preset", "",
        preset.description.strip(), "",
        "## Setup", "",
        f"- training: {preset.steps} simulator ticks per run, `--config {preset.train_config}`, seeds {seeds} "
        f"(one `td3-drive train` run dir per agent and seed); common overrides: "
        f"{', '.join(f'`{s}`' for s in preset.train_set) or 'none'}",
        f"- evaluation: {preset.eval_episodes} episodes per run, no exploration noise, simulator seeds "
        f"{preset.eval_seed + 1}..{preset.eval_seed + preset.eval_episodes} for **every** agent "
        f"(`--config {preset.eval_config}`; overrides {', '.join(f'`{s}`' for s in preset.eval_set) or 'none'})",
        f"- runs trained now: {len(meta.get('trained', []))}, reused: {len(meta.get('reused', []))}; "
        f"training wall time {meta.get('train_wall_s')} s, total {meta.get('wall_s')} s", "",
        "| agent | label | training overrides |", "|---|---|---|",
    ]
    for agent in preset.agents:
        lines.append(f"| `{agent}` | {labels[agent]} | {', '.join(f'`{s}`' for s in AGENTS[agent][1]) or '(defaults)'} |")
    lines.append(f"| `pid` | {labels['pid']} | not trained |")
    if "privileged" in labels:
        lines.append(f"| `privileged` | {labels['privileged']} | not trained: Pure Pursuit + IDM gap keeping on the "
                     "simulator's true lead distance, the reference that shows the hazards can be solved |")
    lines += ["", "## Learning curves", "",
              "Mean across seeds, band = 95 % t-interval of the mean (no band with one seed); on log-scale "
              "panels both are computed on log10 values (geometric mean). Returns are a "
              f"trailing mean over {RETURN_WINDOW} training episodes (with exploration noise); learner scalars are "
              "placed at the env step of their update.", "",
              f"![learning curves]({plots['learning_curves']})", "",
              "### Encoder feature L2 norm (log scale)", "",
              "Without LayerNorm the encoders' feature norms are free to grow with training; with it they stay "
              "at the constant scale the final LayerNorm(512) + LeakyReLU sets (about 16)." + _encoder_note(meta), "",
              f"![feature L2]({plots['feature_l2']})", "",
              *health_section,
              "### Losses and Q values", "",
              f"![losses]({plots['losses']})", "", f"![Q values]({plots['q_values']})", "",
              "## Evaluation metrics", "",
              "Per agent, pooled over training seeds x evaluation episodes; collisions and lane invasions per km are "
              "pooled rates (events / total km); success = completed, no collision, never off route "
              "(definitions: docs/metrics.md in the repository).", "",
              "| agent | runs | episodes | success rate [95% CI] | clean / hazard success | route completion | "
              "collisions/km | lane inv./km | mean speed (m/s) | RMS lateral dev. (m) | RMS jerk (m/s³) | "
              "return (mean ± sd) | return sd across seeds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        if not r["episodes"]:
            lines.append(f"| {r['label']} | {r['runs']} | 0 | " + " | ".join(["n/a"] * 10) + " |")
            continue
        lines.append(
            f"| {r['label']} | {r['runs']} | {r['episodes']} | {_fmt(r['success_rate'], 2)} "
            f"[{_fmt(r['success_ci95_lo'], 2)}, {_fmt(r['success_ci95_hi'], 2)}] | "
            f"{_fmt(r['success_clean'], 2)} / {_fmt(r['success_hazard'], 2)} | {_fmt(r['route_completion'])} | "
            f"{_fmt(r['collisions_per_km'])} | {_fmt(r['lane_invasions_per_km'])} | {_fmt(r['mean_speed'])} | "
            f"{_fmt(r['rms_lateral_deviation'])} | {_fmt(r['rms_longitudinal_jerk'])} | "
            f"{_fmt(r['return'])} ± {_fmt(r['return_std'])} | {_fmt(r['return_seed_std'])} |")
    lines += ["", f"![evaluation distributions]({plots['eval_distributions']})", ""]
    if meta.get("videos"):
        lines += ["### One evaluation episode per agent", "",
                  f"Evaluation episode 1 (simulator seed {preset.eval_seed + 1}) of each agent's first training seed: "
                  "camera view with action, speed and actor feature L2.", ""]
        lines += [f"**{labels.get(agent, agent)}**\n\n![{agent}]({path})\n" for agent, path in meta["videos"].items()]
    lines += _ranking_markdown(labels, ranks)
    lines += overestimation_section
    lines += ["## Mann-Whitney U tests", "",
              "Two-sided, per-episode values pooled over seeds; `P(a>b)` = U / (n_a n_b) (0.5: no difference); "
              "`p (Holm)` corrects for the pairs tested per metric. Episodes of one training run are not "
              "independent draws of the training process: with few seeds, read these as descriptive.", "",
              "| metric | a | b | n_a | n_b | median a | median b | U | P(a>b) | p | p (Holm) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in tests:
        lines.append(f"| {t['metric']} | `{t['a']}` | `{t['b']}` | {t['n_a']} | {t['n_b']} | {_fmt(t['median_a'])} | "
                     f"{_fmt(t['median_b'])} | {_fmt(t['U'])} | {_fmt(t['prob_a_greater'], 2)} | {_fmt(t['p'])} | "
                     f"{_fmt(t['p_holm'])} |")
    lines += ["", "## Files", "",
              "- `metrics.csv`, `metrics.json`: the table above (all columns)",
              "- `episodes.csv`, `episodes.json`: every evaluation episode (agent, train_seed, seed, return, "
              "EpisodeMetrics fields)",
              "- `stats.csv`, `stats.json`: the Mann-Whitney U tests",
              "- `ranking.json`: IQM with bootstrap CIs, per-run scores, probability of improvement",
              "- `curves.json`: the aggregated curves plotted above",
              "- `overestimation.json`: the value-overestimation table above, per agent",
              "- `eval/<agent>/seed_<s>/episodes.{json,csv}`: per run, as written by `td3-drive eval`",
              "- the training runs: `<runs>/<agent>/seed_<s>/` (TensorBoard, checkpoints, config snapshot)", ""]
    return "\n".join(lines)


def _encoder_note(meta: dict[str, Any]) -> str:
    if meta.get("encoder_mode") == "shared":
        return (" These runs use `encoder_mode: shared` (DrQ-v2): the actor acts on the critic encoder's features "
                "(detached), so both panels show the same encoder; `separate` gives each its own.")
    return ""


# ------------------------------------------------------------------ entry point
def write_report(out: Path, preset: Preset, runs: dict[str, list[Path]], evals: dict[str, list[EvalResult]],
                 labels: dict[str, str], meta: dict[str, Any] | None = None) -> dict[str, str]:
    """Write report.md, the PNGs, metrics/episodes/stats CSV + JSON and curves.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    first = next((d for dirs in runs.values() for d in dirs if (d / "config.yaml").exists()), None)
    if first is not None:
        meta.setdefault("encoder_mode", _trainer_parameters(first).get("learner.encoder_mode", "separate"))
    tags = [tag for panels in CURVES.values() for tag, _ in panels]
    grid = np.linspace(0.0, float(preset.steps), max(2, preset.curve_points))
    curves: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for agent, run_dirs in runs.items():
        per_tag: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {t: [] for t in tags}
        for run_dir in run_dirs:
            for tag, (x, y) in run_scalars(run_dir, tags).items():
                if tag == "episode/return":
                    y = _trailing_mean(y, RETURN_WINDOW)
                per_tag[tag].append((x, y))
        curves[agent] = {tag: _aggregate_tag(tag, c, grid) for tag, c in per_tag.items() if c}

    files: dict[str, str] = {}
    plots = {name: f"{name}.png" for name in PLOTS}
    for name in CURVES:
        plot_curves(name, curves, labels, out / plots[name])
    rows = {agent: [row for result in results for row in result.episodes] for agent, results in evals.items()}
    plot_distributions(rows, labels, out / plots["eval_distributions"])
    files.update({name: str(out / p) for name, p in plots.items()})

    table = metrics_table(rows, evals, labels)
    tests = mann_whitney(rows)
    ranks = ranking(evals, [a for a in preset.agents if a in evals])
    write_json(ranks, out / "ranking.json")
    all_rows = [row for agent_rows in rows.values() for row in agent_rows]
    write_csv(table, out / "metrics.csv")
    write_json(table, out / "metrics.json")
    write_csv(all_rows, out / "episodes.csv")
    write_json(all_rows, out / "episodes.json")
    write_csv(tests, out / "stats.csv")
    write_json(tests, out / "stats.json")
    write_json({agent: {tag: {k: v.tolist() for k, v in agg.items()} for tag, agg in by_tag.items()}
                for agent, by_tag in curves.items()}, out / "curves.json")
    values = overestimation_curves(runs)
    write_json(values, out / "overestimation.json")
    value_plot = None
    if any(c["step"] for c in values.values()):
        value_plot = OVERESTIMATION_PLOT
        plot_overestimation(values, labels, out / value_plot)
        files["overestimation_png"] = str(out / value_plot)
    health = run_health(runs)
    write_json(health, out / "health.json")
    (out / "report.md").write_text(_markdown(preset, labels, table, tests, meta, plots, ranks,
                                             overestimation_markdown(values, labels, value_plot),
                                             health_markdown(health, labels)))
    for name in ("metrics.csv", "metrics.json", "episodes.csv", "episodes.json", "stats.csv", "stats.json",
                 "curves.json", "ranking.json", "overestimation.json", "health.json", "report.md"):
        files[name.replace(".", "_")] = str(out / name)
    return files

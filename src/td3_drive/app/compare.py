"""`td3-drive compare`: TD3 + LayerNorm against DDPG and TD3 without LayerNorm (and the PID controller).

Trains (or reuses) one run per agent and seed under ``<runs>/<agent>/seed_<s>/``,
measures every kept checkpoint's value overestimation (:mod:`td3_drive.app.overestimation`),
evaluates every run and the classical controller on the same protocol episodes,
and hands everything to :mod:`td3_drive.app.report`.  Runs are TensorBoard event
files + safetensors checkpoints; results are JSON and CSV.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from td3_drive.app import overestimation, report
from td3_drive.app.evaluation import evaluate
from td3_drive.app.protocol import AGENTS, PID, PID_LABEL, PRIVILEGED, PRIVILEGED_LABEL, Preset
from td3_drive.app.results import EvalResult, save_eval, write_json
from td3_drive.app.train import TrainOptions, train
from td3_drive.rl.checkpoint import Checkpointer


def run_dir_for(runs: Path, agent: str, seed: int) -> Path:
    return runs / agent / f"seed_{seed}"


def train_run(agent: str, seed: int, run_dir: Path, preset: Preset, extra_set: list[str],
              resume: bool = False) -> dict[str, Any]:
    """One training run in-process on its own run dir, without a bag."""
    options = TrainOptions(run_dir=run_dir, config=preset.train_config, steps=preset.steps, seed=seed, resume=resume,
                           overrides=[*preset.train_set, *AGENTS[agent][1], *extra_set], bag=False)
    summary = train(options)
    write_json({"agent": agent, "seed": seed, "argv": options.argv(), "summary": summary},
               run_dir / "train_summary.json")
    return summary


def _has_checkpoint(run_dir: Path) -> bool:
    return Checkpointer(run_dir / "checkpoints").latest() is not None  # verifies checksums: call once per run


def compare(preset: Preset, out: Path, runs: Path | None = None, train_missing: bool = True,
            extra_train_set: list[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or reuse) every agent x seed, evaluate all runs + PID on the same seeds, write the report."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    runs = runs or out / "runs"
    start = time.perf_counter()
    jobs = [(a, s) for a in preset.agents for s in preset.seeds]
    trained, reused = [], []
    for i, (agent, seed) in enumerate(jobs, start=1):
        run_dir = run_dir_for(runs, agent, seed)
        has_checkpoint = _has_checkpoint(run_dir)
        finished = (run_dir / "train_summary.json").exists() and has_checkpoint
        # --no-train: any run with a checkpoint is taken as it is (e.g. runs trained elsewhere)
        if finished or (not train_missing and has_checkpoint):
            reused.append(str(run_dir))
            log(f"[{i}/{len(jobs)}] reuse {agent} seed {seed}: {run_dir}")
            continue
        if not train_missing:
            raise SystemExit(f"no run with a checkpoint at {run_dir} (and --no-train)")
        # a checkpoint without train_summary.json: an interrupted compare run, continued with --resume
        resume = has_checkpoint
        log(f"[{i}/{len(jobs)}] {'resume' if resume else 'train'} {agent} seed {seed} ({preset.steps} steps) -> {run_dir}")
        train_run(agent, seed, run_dir, preset, list(extra_train_set or []), resume)
        trained.append(str(run_dir))
    train_wall = time.perf_counter() - start

    if preset.overestimation_episodes:  # measures only checkpoints not measured yet: compare stays resumable
        for agent, seed in jobs:
            log(f"overestimation {agent} seed {seed}: {preset.overestimation_episodes} episodes per checkpoint")
            try:
                overestimation.measure_run(run_dir_for(runs, agent, seed), preset.overestimation_episodes,
                                           preset.eval_seed)
            except SystemExit as exc:  # a run it cannot measure (no config.yaml): the report says it is missing
                log(f"overestimation {agent} seed {seed}: not measured: {exc}")

    evals: dict[str, list[EvalResult]] = {}
    videos: dict[str, str] = {}  # agent -> GIF of its first evaluation episode (first training seed), for the report

    def video_for(agent: str, seed: int | None) -> Path | None:
        if seed not in (None, preset.seeds[0]):
            return None
        videos[agent] = f"video/{agent}.gif"
        return out / videos[agent]

    for agent, seed in jobs:
        run_dir = run_dir_for(runs, agent, seed)
        log(f"eval {agent} seed {seed}: {preset.eval_episodes} episodes from seed {preset.eval_seed + 1}")
        result = evaluate(agent, "policy", run_dir, preset.protocol(), preset.eval_max_ticks,
                          preset.eval_config, preset.eval_set, video=video_for(agent, seed), video_episodes=1)
        result.meta["train_seed"] = seed
        for row in result.episodes:
            row["train_seed"] = seed
        save_eval(result, out / "eval" / agent / f"seed_{seed}")
        evals.setdefault(agent, []).append(result)
    for reference in (PID, PRIVILEGED):  # the blind classical driver, and the one that knows the lead distance
        log(f"eval {reference}: {preset.eval_episodes} episodes")
        result = evaluate(reference, reference, None, preset.protocol(), preset.eval_max_ticks, preset.eval_config,
                          preset.eval_set, video=video_for(reference, None), video_episodes=1)
        save_eval(result, out / "eval" / reference)
        evals[reference] = [result]

    labels = {a: AGENTS[a][0] for a in preset.agents} | {PID: PID_LABEL, PRIVILEGED: PRIVILEGED_LABEL}
    runs_by_agent = {a: [run_dir_for(runs, a, s) for s in preset.seeds] for a in preset.agents}
    files = report.write_report(out, preset, runs_by_agent, evals, labels,
                                meta={"trained": trained, "reused": reused, "train_wall_s": round(train_wall, 1),
                                      "videos": videos,
                                      "wall_s": round(time.perf_counter() - start, 1), "argv": sys.argv})
    return {"command": "compare", "preset": preset.name, "out": str(out), "runs": str(runs),
            "trained": len(trained), "reused": len(reused), "files": files,
            "train_wall_s": round(train_wall, 1), "wall_s": round(time.perf_counter() - start, 1)}

"""Evaluation on the embedded default: fixed-seed episodes of a checkpoint or a classical controller.

Evaluation runs the same embedded graph as ``td3-drive drive`` (simulator ->
preprocessor -> policy | classical_controller -> evaluator) for the episodes of
the protocol (:class:`~td3_drive.app.protocol.Protocol`), without learning and
without exploration noise.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from td3_drive.app import embedded
from td3_drive.app.config import compose, merge
from td3_drive.app.console import progress_bar, resolve_checkpoint
from td3_drive.app.protocol import CONTROLLERS, IMAGE_MODES, PID, PRIVILEGED, Protocol
from td3_drive.app.results import EvalResult, save_eval
from td3_drive.app.video import DriveRecorder
from td3_drive.driving.metrics import summarize, summarize_by


def eval_parameters(controller: str, checkpoint: str | Path | None, protocol: Protocol, config: str = "drive",
                    overrides: list[str] | None = None, extra: dict[str, dict[str, Any]] | None = None,
                    image: str = "camera") -> dict[str, dict[str, Any]]:
    """Node parameters of an evaluation graph: the protocol's episodes, no exploration.

    The policy's ``layer_norm`` / ``frame_stack`` / ``trunk_dim`` are taken from the checkpoint, so the
    ablations' actors load without extra flags.  ``image`` other than ``camera`` replaces what the
    policy sees (the preprocessor's ``image_ablation``).
    """
    extra = merge(protocol.parameters(), extra or {})
    if image not in IMAGE_MODES:
        raise SystemExit(f"image must be one of {IMAGE_MODES}, got {image!r}")
    if image != "camera":
        extra = merge(extra, {"camera_preprocessor": {"image_ablation": image}})
    actor = None
    if controller == "policy":
        if not checkpoint:
            raise SystemExit("eval --controller policy needs --checkpoint (a run dir, checkpoint dir or actor file)")
        actor = resolve_checkpoint(str(checkpoint))
        extra["policy"] = {"explore": False}
    elif controller == PRIVILEGED:
        extra = merge(extra, {"classical_controller": {"privileged": True}})
    elif controller != PID:
        raise SystemExit(f"controller must be one of {CONTROLLERS}, got {controller!r}")
    return compose(config, None, list(overrides or []), extra, actor=actor)


def run_episodes(graph: embedded.EmbeddedGraph, episodes: int, max_ticks: int,
                 on_episode: Callable[[int], None] | None = None, chunk: int = 20) -> None:
    """Advance ``graph`` until its evaluator has ``episodes`` finished episodes or ``max_ticks`` ticks."""
    evaluator = graph.nodes["evaluator"]
    graph.start()
    # stop on the tick that ends the last episode, not at the next chunk boundary
    graph.run(max_ticks - graph.sim.ticks, None if on_episode is None else lambda: on_episode(len(evaluator.episodes)),
              every=chunk, stop=lambda: len(evaluator.episodes) >= episodes)


def evaluate(agent: str, controller: str = "policy", checkpoint: str | Path | None = None,
             protocol: Protocol = Protocol(), max_ticks: int = 100_000, config: str = "drive",
             overrides: list[str] | None = None, progress: bool = True, video: str | Path | None = None,
             video_episodes: int = 0, image: str = "camera") -> EvalResult:
    """Drive the protocol's fixed-seed episodes with a checkpoint or a classical controller; no learning.

    ``video`` (.mp4 or .gif): the camera view with action, speed and feature L2 overlaid, of the first
    ``video_episodes`` episodes (0: all).  ``image``: ``blank`` feeds the policy all-zero frames,
    ``shuffled`` the frames of the episode before (one extra episode, on the seed before the
    protocol's first, drives first to lend its frames to episode 1, and is left out of the results).
    """
    episodes, eval_seed = protocol.episodes, protocol.eval_seed
    lead_in = 1 if image == "shuffled" else 0
    driven = replace(protocol, episodes=episodes + lead_in, eval_seed=eval_seed - lead_in)
    params = eval_parameters(controller, checkpoint, driven, config, overrides, image=image)
    graph = embedded.build_graph(params, controller=controller, trainer=False, evaluator=True)
    evaluator = graph.nodes["evaluator"]
    recorder = DriveRecorder(video, graph.sim.topics, max_episodes=video_episodes) if video else None
    if recorder is not None:
        graph.runtime.add_tap(recorder)
    bar = progress_bar(episodes, f"eval {agent}") if progress else None
    start = time.perf_counter()

    def on_episode(done: int) -> None:
        if bar is not None:
            bar.n = done
            bar.set_postfix(ticks=graph.sim.ticks, refresh=False)
            bar.refresh()

    try:
        run_episodes(graph, driven.episodes, max_ticks, on_episode)
    finally:
        if bar is not None:
            bar.close()
        if recorder is not None:
            recorder.close()
        graph.close()
    rows = []
    scored = list(zip(evaluator.episodes, evaluator.returns))[lead_in:]
    for k, (m, ret) in enumerate(scored, start=1):
        seed = int(eval_seed) + k  # Protocol.parameters: the simulator's episode k - 1, on its seed
        rows.append({"agent": agent, "episode": k, "seed": seed, "hazard": graph.sim.hazard_by_seed.get(seed, ""),
                     "return": float(ret), **m.to_dict()})
    metrics = [m for m, _ in scored]
    return EvalResult(agent, rows, summarize(metrics) if metrics else None, graph.sim.ticks,
                      graph.sim.ticks >= max_ticks, round(time.perf_counter() - start, 2),
                      {"controller": controller, "checkpoint": str(checkpoint) if checkpoint else None,
                       "eval_seed": int(eval_seed), "episodes_requested": episodes, "drops": graph.drop_counts(),
                       "protocol": asdict(protocol), "image": image,
                       "by_hazard": summarize_by(metrics, [row["hazard"] for row in rows]),
                       **({"video": str(video), "video_frames": recorder.frames_written} if recorder else {})})


def split_line(result: EvalResult) -> str:
    """'success 15/20 = 75 % (clean 9/10, hazard 6/10: brake_hold 2/3, ...)' of one evaluation."""
    s = result.summary or {}
    by = result.meta.get("by_hazard", {})
    parts = [f"success {s.get('successes', 0)}/{s.get('n', 0)} = {100 * s.get('success_rate', 0):.0f} %"]
    clean, hazard = by.get("none"), by.get("hazard")
    if hazard:
        kinds = ", ".join(f"{kind} {v['successes']}/{v['n']}" for kind, v in by.items()
                          if kind not in ("none", "hazard"))
        parts.append(f"(clean {clean['successes'] if clean else 0}/{clean['n'] if clean else 0}, "
                     f"hazard {hazard['successes']}/{hazard['n']}: {kinds})")
    return " ".join(parts)


def evaluate_run(run_dir: Path, episodes: int, protocol_name: str = Protocol.name) -> dict[str, Any]:
    """Evaluate a run's newest checkpoint on ``episodes`` protocol episodes, say how it drives on stderr,
    and write ``run_dir/eval/episodes.{json,csv}``."""
    protocol = Protocol.named(protocol_name, episodes=episodes)
    result = evaluate(run_dir.name, "policy", run_dir, protocol)
    files = save_eval(result, run_dir / "eval")
    s = result.summary or {}
    completion = s.get("metrics", {}).get("route_completion", {}).get("mean", float("nan"))
    print(f"evaluation ({protocol.describe()}): {split_line(result)}, route completion {completion:.2f}, "
          f"ends {s.get('end_reasons', {})}; per episode: {files['csv']}", file=sys.stderr, flush=True)
    by = result.meta["by_hazard"]
    return {"success_rate": s.get("success_rate"), "route_completion": completion,
            "success_rate_clean": by.get("none", {}).get("success_rate"),
            "success_rate_hazard": by.get("hazard", {}).get("success_rate"),
            "end_reasons": s.get("end_reasons"), "episodes": len(result.episodes), "files": files,
            "wall_s": result.wall_s}

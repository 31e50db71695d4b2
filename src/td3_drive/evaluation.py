"""`td3-drive eval` and `td3-drive compare`: fixed-seed evaluation, multi-seed training, presets.

Evaluation runs the same embedded graph as ``td3-drive drive`` (simulator ->
preprocessor -> policy | classical_controller -> evaluator) for N episodes.
Episode k (1..N) runs on simulator seed ``eval_seed + k``, so every agent and
the classical controller see exactly the same scenarios.  Training seeds use
simulator seeds ``seed * 1000 + k`` (cli._parameters), far from the default
``eval_seed`` of 1_000_000.

``compare`` trains (or reuses) one run per agent and seed under
``<runs>/<agent>/seed_<s>/``, evaluates every run and the classical controller,
and hands everything to :mod:`td3_drive.report`.  No pickle anywhere: runs are
TensorBoard event files + safetensors checkpoints, results are JSON and CSV.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from td3_drive import embedded
from td3_drive.reward import RewardConfig

PRESET_DIR = embedded.CONFIG_DIR / "presets"
DEFAULT_EVAL_SEED = 1_000_000
#: the agents of the comparison: name -> (label, --set overrides of `td3-drive train`)
AGENTS: dict[str, tuple[str, list[str]]] = {
    "td3_ln": ("TD3 + LayerNorm", []),
    "ddpg": ("DDPG (same architecture)", ["trainer.learner.algo=ddpg"]),
    "td3_no_ln": ("TD3 without LayerNorm", ["trainer.learner.layer_norm=false", "policy.layer_norm=false"]),
}
PID = "pid"
PID_LABEL = "PID + Pure Pursuit (classical)"


# ------------------------------------------------------------------ protocol
@dataclass(frozen=True)
class Protocol:
    """The evaluation protocol: what an episode is and when it counts as a success.

    Every episode starts at a seeded random point of the lap, on either lane
    (simulator ``random_start``), and follows a route of ``route_length_m`` along
    its starting lane.  Success = route completed without a collision and without
    leaving the route corridor (``max_lateral_deviation``), within a time limit
    that a car averaging ``min_speed_fraction`` of the reward's target speed
    still meets.  Episode k (1..N) runs on simulator seed ``eval_seed + k``.
    """

    route_length_m: float = 200.0
    episodes: int = 20
    eval_seed: int = DEFAULT_EVAL_SEED
    traffic: bool = True  # False: no other vehicles (proves routes, starts and time limit, not the learner)
    min_speed_fraction: float = 0.5

    def time_limit_steps(self, target_speed: float, dt: float) -> int:
        return math.ceil(self.route_length_m / (self.min_speed_fraction * target_speed) / dt)

    def parameters(self) -> dict[str, dict[str, Any]]:
        """Node parameters that set the protocol up (applied before any --set override)."""
        simulator: dict[str, Any] = {"random_start": True, "route_length_m": float(self.route_length_m),
                                     "seed": int(self.eval_seed)}
        if not self.traffic:
            simulator["other_vehicles"] = 0
        reward = RewardConfig()
        return {"simulator": simulator,
                "evaluator": {"reward.max_episode_steps": self.time_limit_steps(reward.target_speed, reward.dt)}}


# ------------------------------------------------------------------ episodes
@dataclass
class EvalResult:
    """Per-episode metrics (EpisodeMetrics dicts + ``return`` + ``seed``) of one agent / checkpoint."""

    agent: str
    episodes: list[dict[str, Any]]
    summary: dict[str, Any] | None
    ticks: int
    max_ticks_reached: bool
    wall_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "episodes": self.episodes, "summary": self.summary, "ticks": self.ticks,
                "max_ticks_reached": self.max_ticks_reached, "wall_s": self.wall_s, **self.meta}


def checkpoint_architecture(actor_file: Path) -> dict[str, Any]:
    """The actor architecture stored in an actor.safetensors file's metadata (layer_norm, frame_stack...)."""
    from safetensors import safe_open

    with safe_open(str(actor_file), framework="numpy") as f:
        metadata = f.metadata() or {}
    return json.loads(metadata.get("architecture", "{}"))


def eval_parameters(controller: str, checkpoint: str | Path | None, protocol: Protocol, config: str = "drive",
                    overrides: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Node parameters of an evaluation graph: the protocol's episodes, no exploration.

    The policy's ``layer_norm`` / ``frame_stack`` / ``trunk_dim`` are taken from the checkpoint, so the
    ablations' actors load without extra flags.
    """
    from td3_drive import cli

    extra = protocol.parameters()
    if controller == "policy":
        if not checkpoint:
            raise SystemExit("eval --controller policy needs --checkpoint (a run dir, checkpoint dir or actor file)")
        actor = cli._resolve_checkpoint(str(checkpoint))
        arch = checkpoint_architecture(actor)
        extra["policy"] = {"checkpoint": str(actor), "explore": False}
        for key in ("layer_norm", "frame_stack", "trunk_dim"):
            if key in arch:
                extra["policy"][key] = arch[key]
    elif controller != PID:
        raise SystemExit(f"controller must be 'policy' or 'pid', got {controller!r}")
    return cli._parameters(config, None, list(overrides or []), extra)


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
             video_episodes: int = 0) -> EvalResult:
    """Drive the protocol's fixed-seed episodes with a checkpoint or the PID controller; no learning.

    ``video`` (.mp4 or .gif): the camera view with action, speed and feature L2 overlaid, of the first
    ``video_episodes`` episodes (0: all).
    """
    from td3_drive import cli
    from td3_drive.metrics import summarize
    from td3_drive.video import DriveRecorder

    episodes, eval_seed = protocol.episodes, protocol.eval_seed
    params = eval_parameters(controller, checkpoint, protocol, config, overrides)
    graph = embedded.build_graph(params, controller=controller, trainer=False, evaluator=True)
    evaluator = graph.nodes["evaluator"]
    recorder = DriveRecorder(video, graph.sim.topics, max_episodes=video_episodes) if video else None
    if recorder is not None:
        graph.runtime.add_tap(recorder)
    bar = cli._progress(episodes, f"eval {agent}") if progress else None
    start = time.perf_counter()

    def on_episode(done: int) -> None:
        if bar is not None:
            bar.n = done
            bar.set_postfix(ticks=graph.sim.ticks, refresh=False)
            bar.refresh()

    try:
        run_episodes(graph, episodes, max_ticks, on_episode)
    finally:
        if bar is not None:
            bar.close()
        if recorder is not None:
            recorder.close()
        graph.close()
    rows = []
    for k, (m, ret) in enumerate(zip(evaluator.episodes, evaluator.returns), start=1):
        # simulator episode k (1-based, see sim/node.py) ran on seed config.seed + k
        rows.append({"agent": agent, "episode": k, "seed": int(eval_seed) + k, "return": float(ret), **m.to_dict()})
    return EvalResult(agent, rows, summarize(evaluator.episodes) if evaluator.episodes else None, graph.sim.ticks,
                      graph.sim.ticks >= max_ticks, round(time.perf_counter() - start, 2),
                      {"controller": controller, "checkpoint": str(checkpoint) if checkpoint else None,
                       "eval_seed": int(eval_seed), "episodes_requested": episodes, "drops": graph.drop_counts(),
                       "protocol": asdict(protocol),
                       **({"video": str(video), "video_frames": recorder.frames_written} if recorder else {})})


def write_csv(result_rows: list[dict[str, Any]], csv_path: Path) -> None:
    """Rows (per episode, per agent, per test) -> CSV (one column per field, NaN as empty)."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in result_rows:
        columns += [c for c in row if c not in columns]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in result_rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def write_json(data: Any, path: Path) -> None:
    """Strict JSON (NaN / inf -> null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(data), indent=1, sort_keys=False))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return _json_safe(value.item())
    return value


def save_eval(result: EvalResult, out: Path) -> dict[str, str]:
    """``out/episodes.json`` (meta, per-episode rows, summary) and ``out/episodes.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(result.to_dict(), out / "episodes.json")
    write_csv(result.episodes, out / "episodes.csv")
    return {"json": str(out / "episodes.json"), "csv": str(out / "episodes.csv")}


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    """`td3-drive eval`: fixed-seed episodes of a checkpoint or the PID controller -> JSON + CSV."""
    controller = "pid" if args.controller == PID else "policy"
    agent = args.name or (PID if controller == PID else Path(str(args.checkpoint)).name)
    result = evaluate(agent, controller, args.checkpoint, protocol_from_args(args), args.max_ticks,
                      args.config, args.set)
    files = save_eval(result, Path(args.out))
    return {"command": "eval", "agent": agent, "controller": controller, "out": str(args.out), "files": files,
            "episodes": len(result.episodes), "seeds": [r["seed"] for r in result.episodes],
            "returns": [round(r["return"], 3) for r in result.episodes], "summary": _json_safe(result.summary),
            "ticks": result.ticks, "max_ticks_reached": result.max_ticks_reached, "wall_s": result.wall_s}


# ------------------------------------------------------------------ presets
@dataclass
class Preset:
    """A compare preset (config/presets/<name>.yaml)."""

    name: str
    description: str = ""
    steps: int = 6000
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_config: str = "train"
    train_set: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=lambda: list(AGENTS))
    eval_episodes: int = Protocol.episodes
    eval_seed: int = DEFAULT_EVAL_SEED
    eval_route_length_m: float = Protocol.route_length_m
    eval_max_ticks: int = 100_000
    eval_config: str = "drive"
    eval_set: list[str] = field(default_factory=list)
    curve_points: int = 50

    def protocol(self) -> Protocol:
        return Protocol(self.eval_route_length_m, self.eval_episodes, self.eval_seed)


def load_preset(name_or_path: str) -> Preset:
    """A preset by name (config/presets/<name>.yaml) or path."""
    path = Path(name_or_path)
    if not path.is_file():
        try:  # config/presets/ in the source tree, or share/td3_drive/config/presets when installed
            path = embedded.find_config(f"presets/{name_or_path}")
        except FileNotFoundError:
            known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            raise SystemExit(f"unknown preset {name_or_path!r} (known: {known})") from None
    raw = yaml.safe_load(path.read_text()) or {}
    train, ev = raw.get("train", {}) or {}, raw.get("eval", {}) or {}
    # YAML key -> Preset field, with its type; absent keys keep the dataclass defaults
    given = {
        "description": raw.get("description"), "agents": raw.get("agents"), "curve_points": raw.get("curve_points"),
        "steps": train.get("steps"), "seeds": train.get("seeds"), "train_config": train.get("config"),
        "train_set": train.get("set"), "eval_episodes": ev.get("episodes"), "eval_seed": ev.get("seed"),
        "eval_max_ticks": ev.get("max_ticks"), "eval_config": ev.get("config"), "eval_set": ev.get("set"),
        "eval_route_length_m": ev.get("route_length_m"),
    }
    cast = {"steps": int, "curve_points": int, "eval_episodes": int, "eval_seed": int, "eval_max_ticks": int,
            "eval_route_length_m": float,
            "seeds": lambda v: [int(x) for x in v], "agents": list, "train_set": list, "eval_set": list}
    preset = Preset(name=raw.get("name", path.stem),
                    **{k: cast.get(k, lambda v: v)(v) for k, v in given.items() if v is not None})
    _check_agents(preset.agents, f"preset {preset.name}: ")
    return preset


def _check_agents(agents: list[str], where: str = "") -> None:
    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        raise SystemExit(f"{where}unknown agents {unknown} (known: {list(AGENTS)})")


# ------------------------------------------------------------------ compare
def run_dir_for(runs: Path, agent: str, seed: int) -> Path:
    return runs / agent / f"seed_{seed}"


def train_run(agent: str, seed: int, run_dir: Path, preset: Preset, extra_set: list[str],
              resume: bool = False) -> dict[str, Any]:
    """One `td3-drive train` in-process on its own run dir (its nodes are closed by cmd_train)."""
    from td3_drive import cli

    argv = ["train", "--config", preset.train_config, "--steps", str(preset.steps), "--run-dir", str(run_dir),
            "--seed", str(seed), "--no-bag", *(["--resume"] if resume else [])]
    for item in [*preset.train_set, *AGENTS[agent][1], *extra_set]:
        argv += ["--set", item]
    args = cli.build_parser().parse_args(argv)  # parser defaults for any flag train may gain
    summary = args.func(args)
    write_json({"agent": agent, "seed": seed, "argv": argv, "summary": summary}, run_dir / "train_summary.json")
    return summary


def _has_checkpoint(run_dir: Path) -> bool:
    from td3_drive.checkpoint import Checkpointer

    return Checkpointer(run_dir / "checkpoints").latest() is not None  # verifies checksums: call once per run


def compare(preset: Preset, out: Path, runs: Path | None = None, train_missing: bool = True,
            extra_train_set: list[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or reuse) every agent x seed, evaluate all runs + PID on the same seeds, write the report."""
    from td3_drive import report

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
    log(f"eval {PID}: {preset.eval_episodes} episodes")
    pid = evaluate(PID, PID, None, preset.protocol(), preset.eval_max_ticks, preset.eval_config, preset.eval_set,
                   video=video_for(PID, None), video_episodes=1)
    save_eval(pid, out / "eval" / PID)
    evals[PID] = [pid]

    labels = {a: AGENTS[a][0] for a in preset.agents} | {PID: PID_LABEL}
    runs_by_agent = {a: [run_dir_for(runs, a, s) for s in preset.seeds] for a in preset.agents}
    files = report.write_report(out, preset, runs_by_agent, evals, labels,
                                meta={"trained": trained, "reused": reused, "train_wall_s": round(train_wall, 1),
                                      "videos": videos,
                                      "wall_s": round(time.perf_counter() - start, 1), "argv": sys.argv})
    return {"command": "compare", "preset": preset.name, "out": str(out), "runs": str(runs),
            "trained": len(trained), "reused": len(reused), "files": files,
            "train_wall_s": round(train_wall, 1), "wall_s": round(time.perf_counter() - start, 1)}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    """`td3-drive compare`: TD3+LN vs DDPG vs TD3 without LN (vs PID) over seeds -> report directory."""
    preset = load_preset(args.preset)
    if args.seeds:
        preset.seeds = [int(s) for s in args.seeds.split(",")]
    if args.steps is not None:
        preset.steps = args.steps
    if args.episodes is not None:
        preset.eval_episodes = args.episodes
    if args.agents:
        preset.agents = args.agents.split(",")
        _check_agents(preset.agents)
    return compare(preset, Path(args.out), Path(args.runs) if args.runs else None, not args.no_train, args.set)


# ------------------------------------------------------------------ CLI wiring
def add_protocol_arguments(p: argparse.ArgumentParser, episodes: int = Protocol.episodes) -> None:
    """--episodes, --eval-seed, --route-length, --no-traffic: the evaluation protocol (:class:`Protocol`)."""
    p.add_argument("--episodes", type=int, default=episodes)
    p.add_argument("--eval-seed", type=int, default=DEFAULT_EVAL_SEED,
                   help=f"episode k (1..N) runs on simulator seed EVAL_SEED + k (default {DEFAULT_EVAL_SEED})")
    p.add_argument("--route-length", type=float, default=Protocol.route_length_m,
                   help="metres of route per episode, from a seeded random start (default %(default)s)")
    p.add_argument("--no-traffic", action="store_true", help="no other vehicles")


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    if args.episodes < 1 or args.route_length <= 0:
        raise SystemExit("--episodes must be >= 1 and --route-length > 0")
    return Protocol(args.route_length, args.episodes, args.eval_seed, traffic=not args.no_traffic)


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser, str], None]) -> None:
    """Register the `eval` and `compare` subcommands on cli.build_parser's subparsers."""
    p = sub.add_parser("eval", help="N fixed-seed episodes of a checkpoint or the PID controller -> JSON + CSV")
    common(p, "drive")
    p.add_argument("--checkpoint", help="run dir, checkpoint dir or actor.safetensors")
    p.add_argument("--controller", choices=["policy", PID], default="policy")
    add_protocol_arguments(p)
    p.add_argument("--max-ticks", type=int, default=100_000, help="stop after this many ticks in total")
    p.add_argument("--out", default="runs/eval", help="writes OUT/episodes.json and OUT/episodes.csv")
    p.add_argument("--name", help="agent name in the output (default: checkpoint dir name or 'pid')")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="TD3+LN vs DDPG vs TD3 without LN vs PID over seeds -> report dir")
    p.add_argument("--preset", default="cpu-small", help="name in config/presets/ (tiny, cpu-small, paper) or path")
    p.add_argument("--out", default="runs/compare", help="report directory (report.md, PNGs, CSV, JSON)")
    p.add_argument("--runs", help="training runs root <RUNS>/<agent>/seed_<s>/ (default OUT/runs); finished "
                                  "runs there are reused, interrupted ones resumed, missing ones trained")
    p.add_argument("--no-train", action="store_true",
                   help="evaluate every run dir that has a checkpoint as it is; fail on a missing one")
    p.add_argument("--seeds", help="comma-separated training seeds (overrides the preset)")
    p.add_argument("--steps", type=int, help="training ticks per run (overrides the preset)")
    p.add_argument("--episodes", type=int, help="evaluation episodes per run (overrides the preset)")
    p.add_argument("--agents", help=f"comma-separated subset of {','.join(AGENTS)}")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="extra `train` override for every run (repeatable)")
    p.set_defaults(func=cmd_compare)

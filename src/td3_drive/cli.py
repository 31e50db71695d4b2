"""td3-drive: train, drive, play (and eval / compare) on the embedded default.

    td3-drive train [--steps N] [--config train] [--run-dir DIR] [--seed S] [--resume] [--vehicles N]
    td3-drive drive --checkpoint PATH [--episodes N] [--controller policy|pid]
    td3-drive play BAG [--checkpoint PATH]
    td3-drive eval (--checkpoint PATH | --controller pid) [--episodes N] [--eval-seed S] [--out DIR]
    td3-drive compare [--preset tiny|cpu-small|paper] [--runs DIR] [--seeds 0,1,2] [--out DIR]
    td3-drive rqt-perspective [--namespace NS] [--trainer-namespace NS] -o FILE
    td3-drive domain-bridge --namespace NS --role-name ROLE --vehicle-domain N --trainer-domain N -o FILE

Each command prints progress on stderr and a JSON summary as the last stdout line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from td3_drive import embedded
from td3_drive.runtime.parameters import for_node

log = logging.getLogger("td3_drive")


def _parameters(config: str, seed: int | None, overrides: list[str], extra: dict[str, dict[str, Any]]) -> dict:
    params = embedded.load_parameters(config)
    for node, values in embedded.load_parameters("embedded").items():
        params.setdefault(node, {}).update(values)
    for node, values in extra.items():
        params.setdefault(node, {}).update(values)
    if seed is not None:
        for node in ("trainer", "policy"):
            params.setdefault(node, {})["seed"] = seed
        params.setdefault("simulator", {})["seed"] = seed * 1000
    for item in overrides:  # --set trainer.learner.tau=0.01
        key, _, value = item.partition("=")
        node, _, name = key.partition(".")
        if not name or not _:
            raise SystemExit(f"--set expects node.param=value, got {item!r}")
        params.setdefault(node, {})[name] = _yaml_value(value)
    return params


def _yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr,
                disable=None if sys.stderr.isatty() else False, mininterval=1.0)


#: --deterministic: what exact resume needs (applied before --set, so a test can still shrink a run)
DETERMINISTIC = {
    "trainer": {"device": "cpu", "checkpoint_replay": True, "checkpoint_episodes": 1, "checkpoint_every": 0,
                "async_updates": False, "replay_on_disk": False},
    "policy": {"device": "cpu", "backend": "torch"},
}


def _make_deterministic() -> None:
    """CPU, one thread, deterministic kernels: the same inputs give bit-identical weights."""
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; intra-op threads are what matter
        pass


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.run_dir)
    extra: dict[str, dict[str, Any]] = {"trainer": {"run_dir": str(run_dir), "resume": args.resume}}
    if args.deterministic:
        _make_deterministic()
        for node, values in DETERMINISTIC.items():
            extra.setdefault(node, {}).update(values)
    params = _parameters(args.config, args.seed, args.set, extra)
    if args.vehicles < 1:
        raise SystemExit("--vehicles must be >= 1")
    if args.vehicles > 1 and for_node(params, "trainer").get("checkpoint_episodes"):
        raise SystemExit("--deterministic (exact resume points) needs one vehicle")
    embedded.snapshot_config(run_dir, embedded.vehicle_parameters(params, args.vehicles), sys.argv)
    graph = embedded.build_graph(params, bag_path=None if args.no_bag else _fresh_bag_path(run_dir),
                                 bag_exclude=tuple(t for t in embedded.BAG_EXCLUDE
                                                   if not (args.bag_observations and t.endswith("/observation/image"))),
                                 vehicles=args.vehicles)
    trainer, policy = graph.nodes["trainer"], graph.of_kind("policy")[0]
    steps = args.steps if args.steps is not None else trainer.total_steps
    start = time.perf_counter()
    start_steps = trainer.env_steps
    # a resume from an episode-boundary checkpoint restored the simulator's tick count: ticks already
    # run count toward --steps, so a resumed run stops at the same total as an uninterrupted one
    graph.start()

    def ticks_run() -> int:  # the first tick is the episode start, not a step
        return graph.sim.ticks - 1

    done_ticks = ticks_run()
    steps_left = max(0, steps - done_ticks)
    bar = _progress(steps, "train")

    def on_progress() -> None:
        bar.n = min(steps, ticks_run())
        last = trainer.episode_returns[-1][1] if trainer.episode_returns else float("nan")
        elapsed = time.perf_counter() - start
        bar.set_postfix(steps_s=f"{(ticks_run() - done_ticks) / max(elapsed, 1e-9):.1f}", ret=f"{last:.1f}",
                        feat_l2=f"{policy.last_feature_l2:.1f}", upd=trainer.learner.num_updates, refresh=False)
        bar.refresh()

    try:
        graph.run(steps_left, on_progress)
    finally:
        bar.close()
        checkpoint = trainer.save_checkpoint()
        graph.close()
    wall = time.perf_counter() - start
    returns = [r for _, r in trainer.episode_returns]
    summary = {
        "command": "train", "run_dir": str(run_dir), "checkpoint": str(checkpoint), "ticks": graph.sim.ticks,
        "env_steps": trainer.env_steps, "new_env_steps": trainer.env_steps - start_steps,
        "updates": trainer.learner.num_updates, "episodes": trainer.episodes, "wall_s": round(wall, 1),
        "steps_per_s": round((ticks_run() - done_ticks) / wall, 2), "resumed_at_tick": done_ticks,
        "vehicles": args.vehicles, "env_steps_per_s": round((trainer.env_steps - start_steps) / wall, 2),
        "rollbacks": trainer.rollbacks,
        "return_first_5": _mean(returns[:5]), "return_last_5": _mean(returns[-5:]),
        "skipped_updates": trainer.learner.health.total_skipped, "drops": graph.drop_counts(),
    }
    if args.eval_episodes > 0:
        summary["eval"] = _final_evaluation(run_dir, args)
    return summary


def _final_evaluation(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the run's newest checkpoint on the evaluation protocol and say how it drives."""
    from td3_drive import evaluation

    protocol = evaluation.Protocol(episodes=args.eval_episodes)
    result = evaluation.evaluate(run_dir.name, "policy", run_dir, protocol)
    files = evaluation.save_eval(result, run_dir / "eval")
    s = result.summary or {}
    completion = s.get("metrics", {}).get("route_completion", {}).get("mean", float("nan"))
    print(f"evaluation ({protocol.episodes} episodes of {protocol.route_length_m:.0f} m from random starts, "
          f"with traffic): success {s.get('successes', 0)}/{s.get('n', 0)} = {100 * s.get('success_rate', 0):.0f} %, "
          f"route completion {completion:.2f}, ends {s.get('end_reasons', {})}; per episode: {files['csv']}",
          file=sys.stderr, flush=True)
    return {"success_rate": s.get("success_rate"), "route_completion": completion,
            "end_reasons": s.get("end_reasons"), "episodes": len(result.episodes), "files": files,
            "wall_s": result.wall_s}


def _fresh_bag_path(run_dir: Path) -> Path:
    bag_dir = run_dir / "bag"
    n = 0
    while (bag_dir.parent / f"{bag_dir.name}{'' if n == 0 else f'_{n}'}").exists():
        n += 1
    return bag_dir.parent / f"{bag_dir.name}{'' if n == 0 else f'_{n}'}"


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def cmd_drive(args: argparse.Namespace) -> dict[str, Any]:
    """Deployment on the embedded simulator: a checkpoint (or the PID baseline), no noise, no learning."""
    from td3_drive import evaluation
    from td3_drive.video import check_video_path

    if args.video:  # refused before anything drives
        try:
            check_video_path(args.video)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    result = evaluation.evaluate(args.controller, args.controller, args.checkpoint,
                                 evaluation.protocol_from_args(args), args.max_ticks, args.config, args.set,
                                 video=args.video)
    return {"command": "drive", **result.to_dict()}


def _resolve_checkpoint(path: str) -> Path:
    """:func:`checkpoint.resolve_actor_file`, as a CLI error."""
    from td3_drive.checkpoint import resolve_actor_file

    try:
        return resolve_actor_file(path)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None


def cmd_play(args: argparse.Namespace) -> dict[str, Any]:
    from td3_drive.nodes.policy import PolicyNode
    from td3_drive.nodes.preprocessor import CameraPreprocessorNode
    from td3_drive.runtime.bag import play_bag
    from td3_drive.runtime.local import LocalRuntime

    extra = {"policy": {"explore": False}}
    if args.checkpoint:
        extra["policy"]["checkpoint"] = str(_resolve_checkpoint(args.checkpoint))
    params = _parameters(args.config, None, args.set, extra)
    runtime = LocalRuntime(params)
    published: dict[str, int] = {}
    runtime.add_tap(lambda topic, type_name, msg, t: published.__setitem__(topic, published.get(topic, 0) + 1))
    preprocessor = CameraPreprocessorNode(runtime.context("camera_preprocessor"))
    policy = PolicyNode(runtime.context("policy"))
    fed = play_bag(args.bag, runtime, topics=None)
    # the tap also sees every message the bag feeds in (runtime.publish): subtract those, so
    # "published" is what the nodes published (topic_types() cannot tell: it lists subscriptions too)
    by_nodes = {t: n - fed.get(t, 0) for t, n in sorted(published.items())}
    return {"command": "play", "bag": str(args.bag), "fed": fed,
            "published": {t: n for t, n in by_nodes.items() if n > 0},
            "drops": {"camera_preprocessor": dict(preprocessor.drops.counts), "policy": dict(policy.drops.counts)},
            "actions": policy.actions}


def _write(command: str, text: str, output: Path) -> dict[str, Any]:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return {"command": command, "output": str(output)}


def cmd_rqt_perspective(args: argparse.Namespace) -> dict[str, Any]:
    from td3_drive import rqt

    return _write("rqt-perspective", rqt.render(args.namespace, args.trainer_namespace), args.output)


def cmd_domain_bridge(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from td3_drive import scaleout
    from td3_drive.topics import Topics

    try:
        config = scaleout.domain_bridge_config(Topics(args.role_name, args.namespace), args.vehicle_domain,
                                               args.trainer_domain)
    except ValueError as exc:
        raise SystemExit(f"domain-bridge: {exc}") from None
    return _write("domain-bridge", yaml.safe_dump(config, sort_keys=False), args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="td3-drive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, config: str) -> None:
        p.add_argument("--config", default=config, help=f"ROS 2 parameter file or name in config/ (default {config})")
        p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                       help="override a parameter, e.g. trainer.learner.tau=0.01 (repeatable)")

    p = sub.add_parser("train", help="train on the embedded simulator")
    common(p, "train")
    p.add_argument("--steps", type=int, default=None, help="simulator ticks to run (default: trainer.total_steps)")
    p.add_argument("--run-dir", default="runs/latest")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    p.add_argument("--vehicles", type=int, default=1,
                   help="vehicle pipelines feeding the one trainer (scale-out; --steps counts vehicle 0's ticks)")
    p.add_argument("--no-bag", action="store_true", help="do not record an MCAP bag of the /td3 topics")
    p.add_argument("--bag-observations", action="store_true",
                   help="also record /td3/observation/image in the bag (28 KB per step)")
    p.add_argument("--eval-episodes", type=int, default=0,
                   help="after training, evaluate the final policy on this many protocol episodes "
                        "(docs/evaluate.md; `make train` uses 20) and print success rate and route completion")
    p.add_argument("--deterministic", action="store_true",
                   help="CPU, one thread, deterministic kernels, checkpoints (with replay and node state) at every "
                        "episode start: a run killed at any point and resumed ends bit-identical")
    p.set_defaults(func=cmd_train)

    from td3_drive import evaluation  # drive, eval, compare share the evaluation protocol (docs/evaluate.md)

    p = sub.add_parser("drive", help="deploy: drive with a checkpoint (or the PID baseline), no learning")
    common(p, "drive")
    p.add_argument("--checkpoint", help="run dir, checkpoint dir or actor.safetensors")
    p.add_argument("--controller", choices=["policy", "pid"], default="policy")
    evaluation.add_protocol_arguments(p, episodes=3)
    p.add_argument("--max-ticks", type=int, default=100_000)
    p.add_argument("--video", help="write the camera view with action, speed and feature L2 to this .mp4 or .gif")
    p.set_defaults(func=cmd_drive)

    p = sub.add_parser("play", help="feed a rosbag2 (MCAP or sqlite3) through preprocessing + policy")
    common(p, "drive")
    p.add_argument("bag", type=Path)
    p.add_argument("--checkpoint")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("rqt-perspective", help="write an rqt perspective: feature plots, reward, observation image")
    p.add_argument("--namespace", default="", help="the vehicle pipeline's namespace (scale-out: v0, v1, ...)")
    p.add_argument("--trainer-namespace", default=None,
                   help="the trainer's namespace (default: --namespace; scale-out: empty)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_rqt_perspective)

    p = sub.add_parser("domain-bridge", help="write the domain_bridge config joining one CARLA server's ROS "
                                             "domain to the trainer's (docs/ros2.md, several servers)")
    p.add_argument("--namespace", required=True, help="the vehicle pipeline's namespace, e.g. v1")
    p.add_argument("--role-name", required=True, help="its ego role name, e.g. hero1 (unique across servers)")
    p.add_argument("--vehicle-domain", type=int, required=True, help="ROS_DOMAIN_ID of that server's graph")
    p.add_argument("--trainer-domain", type=int, required=True, help="ROS_DOMAIN_ID of the trainer")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_domain_bridge)

    evaluation.add_parsers(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    result = args.func(args)
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

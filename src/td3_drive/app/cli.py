"""td3-drive: train, drive, play (and eval / compare) on the embedded default.

    td3-drive train [--steps N] [--config train] [--run-dir DIR] [--seed S] [--resume] [--vehicles N] [--transport dds]
    td3-drive drive --checkpoint PATH [--episodes N] [--controller policy|pid|privileged] [--transport dds]
    td3-drive play BAG [--checkpoint PATH]
    td3-drive node KIND [--config train] [--set ...] [--run-dir DIR] [--resume]
    td3-drive eval (--checkpoint PATH [--image blank|shuffled] | --controller pid|privileged) [--protocol hazards|clean]
                   [--episodes N] [--eval-seed S] [--out DIR]
    td3-drive compare [--preset tiny|cpu-small|paper] [--runs DIR] [--seeds 0,1,2] [--out DIR]
    td3-drive overestimation RUN_DIR [--episodes N] [--eval-seed S]
    td3-drive params [NODE ...]
    td3-drive rqt-perspective [--namespace NS] [--trainer-namespace NS] [--image] -o FILE
    td3-drive domain-bridge --namespace NS --role-name ROLE --vehicle-domain N --trainer-domain N -o FILE

Each command prints progress on stderr and a JSON summary as the last stdout line.  This module
is argparse only: every command calls one function of the app layer, imported when the command
runs, so that `rqt-perspective` and `domain-bridge` work without torch or the simulator.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from td3_drive.app import config
from td3_drive.app.console import resolve_checkpoint
from td3_drive.app.overestimation import DEFAULT_EPISODES as OVERESTIMATION_EPISODES
from td3_drive.app.protocol import (
    AGENTS,
    CONTROLLERS,
    DEFAULT_EVAL_SEED,
    IMAGE_MODES,
    PROTOCOLS,
    Protocol,
    check_agents,
    load_preset,
)
from td3_drive.app.results import json_safe, save_eval
from td3_drive.topics import Topics


def train_options(args: argparse.Namespace) -> Any:
    """``td3-drive train``'s flags -> :class:`~td3_drive.app.train.TrainOptions`."""
    from td3_drive.app.train import TrainOptions

    return TrainOptions(run_dir=Path(args.run_dir), config=args.config, steps=args.steps, seed=args.seed,
                        overrides=args.set, resume=args.resume, vehicles=args.vehicles, bag=not args.no_bag,
                        bag_observations=args.bag_observations, deterministic=args.deterministic,
                        transport=args.transport, restarts=args.restarts)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from td3_drive.app import evaluation
    from td3_drive.app.train import train

    options = train_options(args)
    summary = train(options, sys.argv)
    if args.eval_episodes > 0:
        summary["eval"] = evaluation.evaluate_run(options.run_dir, args.eval_episodes, args.protocol)
    return summary


def cmd_drive(args: argparse.Namespace) -> dict[str, Any]:
    """Deployment on the embedded simulator: a checkpoint (or the PID baseline), no noise, no learning."""
    from td3_drive.app import evaluation
    from td3_drive.app.video import check_video_path

    if args.transport == "dds":
        if args.video:
            raise SystemExit("--video needs the embedded transport (it reads every camera frame in this process)")
        from td3_drive.app import processes

        return processes.drive(args.controller, args.checkpoint, protocol_from_args(args), args.max_ticks,
                               args.config, args.set, args.restarts)
    if args.video:  # refused before anything drives
        try:
            check_video_path(args.video)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    result = evaluation.evaluate(args.controller, args.controller, args.checkpoint, protocol_from_args(args),
                                 args.max_ticks, args.config, args.set, video=args.video)
    print(f"drive: {evaluation.split_line(result)}", file=sys.stderr)
    return {"command": "drive", **result.to_dict()}


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    """`td3-drive eval`: fixed-seed episodes of a checkpoint or the PID controller -> JSON + CSV."""
    from td3_drive.app import evaluation

    controller = args.controller
    agent = args.name or (controller if controller != "policy" else Path(str(args.checkpoint)).name)
    if args.image != "camera" and controller != "policy":
        raise SystemExit("--image changes what the policy sees: it needs --controller policy")
    result = evaluation.evaluate(agent, controller, args.checkpoint, protocol_from_args(args), args.max_ticks,
                                 args.config, args.set, image=args.image)
    files = save_eval(result, Path(args.out))
    print(f"eval {agent}: {evaluation.split_line(result)}", file=sys.stderr)
    return {"command": "eval", "agent": agent, "controller": controller, "out": str(args.out), "files": files,
            "episodes": len(result.episodes), "seeds": [r["seed"] for r in result.episodes],
            "hazards": [r["hazard"] for r in result.episodes], "image": args.image,
            "returns": [round(r["return"], 3) for r in result.episodes], "summary": json_safe(result.summary),
            "by_hazard": {k: {"n": v["n"], "successes": v["successes"], "success_rate": v["success_rate"]}
                          for k, v in result.meta["by_hazard"].items()},
            "ticks": result.ticks, "max_ticks_reached": result.max_ticks_reached, "wall_s": result.wall_s}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    """`td3-drive compare`: TD3+LN vs DDPG vs TD3 without LN (vs PID) over seeds -> report directory."""
    from td3_drive.app import compare

    preset = load_preset(args.preset)
    if args.seeds:
        preset.seeds = [int(s) for s in args.seeds.split(",")]
    if args.steps is not None:
        preset.steps = args.steps
    if args.episodes is not None:
        preset.eval_episodes = args.episodes
    if args.agents:
        preset.agents = args.agents.split(",")
        check_agents(preset.agents)
    return compare.compare(preset, Path(args.out), Path(args.runs) if args.runs else None, not args.no_train,
                           args.set)


def cmd_overestimation(args: argparse.Namespace) -> dict[str, Any]:
    """`td3-drive overestimation`: the critic's Q against the discounted return received, per checkpoint."""
    from td3_drive.app import overestimation

    result = overestimation.measure_run(args.run_dir, args.episodes, args.eval_seed, args.tail_weight)
    last = result["checkpoints"][-1]
    def value(key: str) -> str:  # None: no settled state in the episodes (JSON has no NaN)
        return "n/a" if last[key] is None else f"{last[key]:.3g}"

    print(f"overestimation of {args.run_dir}: {len(result['checkpoints'])} checkpoints ({result['measured_now']} "
          f"measured now); at step {last['step']} mean Q {value('mean_q')}, discounted return "
          f"{value('mean_return')}, bias {value('bias')}", file=sys.stderr)
    return {"command": "overestimation", "file": str(Path(args.run_dir) / overestimation.RESULT_FILE),
            "checkpoints": len(result["checkpoints"]), "measured_now": result["measured_now"],
            "bias": {row["step"]: row["bias"] for row in result["checkpoints"]}}


def cmd_play(args: argparse.Namespace) -> dict[str, Any]:
    from td3_drive.app import embedded
    from td3_drive.runtime.bag import BagError

    actor = resolve_checkpoint(args.checkpoint) if args.checkpoint else None
    params = config.compose(args.config, None, args.set, {"policy": {"explore": False}}, actor=actor)
    try:
        return {"command": "play", **embedded.play(args.bag, params)}
    except BagError as exc:  # a file that is no bag: say so, no traceback
        raise SystemExit(f"td3-drive play: {exc}") from None


def cmd_node(args: argparse.Namespace) -> dict[str, Any]:
    """One node over Cyclone DDS in this process; Ctrl-C stops it (a trainer saves its checkpoint)."""
    from td3_drive.app import processes

    return processes.run_single_node(args.kind, args.name or args.kind, args.config, args.set, Path(args.run_dir),
                                     args.resume)


def cmd_params(args: argparse.Namespace) -> dict[str, Any]:
    from td3_drive.app import embedded

    kinds = args.nodes or list(embedded.NODE_KINDS)
    unknown = sorted(set(kinds) - set(embedded.NODE_KINDS))
    if unknown:
        raise SystemExit(f"params: unknown nodes {unknown} (known: {list(embedded.NODE_KINDS)})")
    listed = {kind: {name: {"default": default, "description": text}
                     for name, (default, text) in sorted(embedded.declared_parameters(kind).items())}
              for kind in kinds}
    return {"command": "params", "nodes": listed}


def _write(command: str, text: str, output: Path) -> dict[str, Any]:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return {"command": command, "output": str(output)}


def cmd_rqt_perspective(args: argparse.Namespace) -> dict[str, Any]:
    from td3_drive.app import rqt

    return _write("rqt-perspective", rqt.render(args.namespace, args.trainer_namespace, args.image), args.output)


def cmd_domain_bridge(args: argparse.Namespace) -> dict[str, Any]:
    from td3_drive.app import scaleout

    try:
        bridge = scaleout.domain_bridge_config(Topics(args.role_name, args.namespace), args.vehicle_domain,
                                               args.trainer_domain)
    except ValueError as exc:
        raise SystemExit(f"domain-bridge: {exc}") from None
    return _write("domain-bridge", yaml.safe_dump(bridge, sort_keys=False), args.output)


# ------------------------------------------------------------------ arguments
def add_protocol_arguments(p: argparse.ArgumentParser, episodes: int = Protocol.episodes) -> None:
    """--protocol, --episodes, --eval-seed, --route-length, --no-traffic, --hazard-share: the evaluation
    protocol (:class:`Protocol`)."""
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=Protocol.name,
                   help="hazards: half the episodes have a car in the ego's lane that brakes, crawls or cuts in "
                        "(default) | clean: lane following among traffic (docs/evaluate.md)")
    p.add_argument("--hazard-share", type=float, default=None,
                   help="share of hazard episodes (default: the protocol's, 0.5 for hazards)")
    p.add_argument("--episodes", type=int, default=episodes)
    p.add_argument("--eval-seed", type=int, default=DEFAULT_EVAL_SEED,
                   help=f"episode k (1..N) runs on simulator seed EVAL_SEED + k (default {DEFAULT_EVAL_SEED})")
    p.add_argument("--route-length", type=float, default=Protocol.route_length_m,
                   help="metres of route per episode, from a seeded random start (default %(default)s)")
    p.add_argument("--no-traffic", action="store_true", help="no other vehicles")


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    if args.episodes < 1 or args.route_length <= 0:
        raise SystemExit("--episodes must be >= 1 and --route-length > 0")
    if args.hazard_share is not None and not 0.0 <= args.hazard_share <= 1.0:
        raise SystemExit("--hazard-share must be in [0, 1]")
    share = {} if args.hazard_share is None else {"hazard_share": args.hazard_share}
    return Protocol.named(args.protocol, route_length_m=args.route_length, episodes=args.episodes,
                          eval_seed=args.eval_seed, traffic=not args.no_traffic, **share)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="td3-drive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, config: str) -> None:
        p.add_argument("--config", default=config, help=f"ROS 2 parameter file or name in config/ (default {config})")
        p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                       help="override a parameter, e.g. trainer.learner.tau=0.01 (repeatable)")

    def transport(p: argparse.ArgumentParser) -> None:
        p.add_argument("--transport", choices=["embedded", "dds"], default="embedded",
                       help="embedded: every node in this process, lockstep (default) | dds: one process per node "
                            "over Cyclone DDS, loopback only unless TD3_DDS_INTERFACE is set (docs/ros2.md)")
        p.add_argument("--restarts", type=int, default=3, help="dds: times a crashed node process is restarted")

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
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=Protocol.name,
                   help="the protocol of --eval-episodes (default %(default)s)")
    p.add_argument("--deterministic", action="store_true",
                   help="CPU, one thread, deterministic kernels, checkpoints (with replay and node state) at every "
                        "episode start: a run killed at any point and resumed ends bit-identical")
    transport(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("drive", help="deploy: drive with a checkpoint (or the PID baseline), no learning")
    common(p, "drive")
    p.add_argument("--checkpoint", help="run dir, checkpoint dir or actor.safetensors")
    p.add_argument("--controller", choices=list(CONTROLLERS), default="policy",
                   help="policy | pid (blind PID + Pure Pursuit) | privileged (+ IDM on the true lead distance)")
    add_protocol_arguments(p, episodes=3)
    p.add_argument("--max-ticks", type=int, default=100_000)
    p.add_argument("--video", help="write the camera view with action, speed and feature L2 to this .mp4 or .gif")
    transport(p)
    p.set_defaults(func=cmd_drive)

    p = sub.add_parser("node", help="run one node over Cyclone DDS in this process (e.g. the trainer on a "
                                    "pip-only GPU machine; docs/ros2.md)")
    p.add_argument("kind", choices=["simulator", "camera_preprocessor", "policy", "trainer", "evaluator",
                                    "classical_controller"])
    common(p, "train")
    p.add_argument("--name", help="node name (default: the kind; v0/policy for a namespaced pipeline)")
    p.add_argument("--run-dir", default="runs/latest", help="trainer: checkpoints and logs; every node: config.yaml")
    p.add_argument("--resume", action="store_true", help="trainer: continue from the newest checkpoint in --run-dir")
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("play", help="feed a rosbag2 (MCAP or sqlite3) through preprocessing + policy")
    common(p, "drive")
    p.add_argument("bag", type=Path)
    p.add_argument("--checkpoint")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("params", help="every parameter the nodes declare: default and description (JSON)")
    p.add_argument("nodes", nargs="*", help="node names, e.g. trainer policy (default: every node)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("rqt-perspective", help="write an rqt perspective: feature plots and reward (--image: and "
                                               "the observation image, needs rqt_image_view)")
    p.add_argument("--namespace", default="", help="the vehicle pipeline's namespace (scale-out: v0, v1, ...)")
    p.add_argument("--trainer-namespace", default=None,
                   help="the trainer's namespace (default: --namespace; scale-out: empty)")
    p.add_argument("--image", action="store_true",
                   help="add rqt_image_view on /td3/observation/image (rqt shows no plot if it is not installed)")
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

    p = sub.add_parser("eval", help="N fixed-seed episodes of a checkpoint or the PID controller -> JSON + CSV")
    common(p, "drive")
    p.add_argument("--checkpoint", help="run dir, checkpoint dir or actor.safetensors")
    p.add_argument("--controller", choices=list(CONTROLLERS), default="policy",
                   help="policy | pid (blind PID + Pure Pursuit) | privileged (+ IDM on the true lead distance)")
    p.add_argument("--image", choices=list(IMAGE_MODES), default="camera",
                   help="what the policy sees: camera | blank (zeros) | shuffled (another episode's frames); the "
                        "drop on hazard episodes measures how much it uses the camera")
    add_protocol_arguments(p)
    p.add_argument("--max-ticks", type=int, default=100_000, help="stop after this many ticks in total")
    p.add_argument("--out", default="runs/eval", help="writes OUT/episodes.json and OUT/episodes.csv")
    p.add_argument("--name", help="agent name in the output (default: checkpoint dir name or 'pid')")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="TD3+LN vs DDPG vs TD3 without LN vs PID over seeds -> report dir")
    p.add_argument("--preset", default="cpu-hazards",
                   help="name in config/presets/ (tiny, cpu-hazards, cpu-small, paper) or path")
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

    p = sub.add_parser("overestimation", help="per checkpoint of a run: the critic's Q at evaluation states against "
                                              "the discounted return received (TD3 paper, Fig. 1) -> "
                                              "RUN_DIR/overestimation.json")
    p.add_argument("run_dir", type=Path, help="a `td3-drive train` run directory (config.yaml, checkpoints/)")
    p.add_argument("--episodes", type=int, default=OVERESTIMATION_EPISODES,
                   help="episodes per checkpoint (deterministic actor)")
    p.add_argument("--eval-seed", type=int, default=DEFAULT_EVAL_SEED,
                   help=f"episode k (1..N) runs on simulator seed EVAL_SEED + k (default {DEFAULT_EVAL_SEED})")
    p.add_argument("--tail-weight", type=float, default=None,
                   help="a state of a time-limited episode counts once the unseen rest weighs at most this "
                        "(gamma^steps left; default 0.01)")
    p.set_defaults(func=cmd_overestimation)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    result = args.func(args)
    print(json.dumps(result, default=float))
    return 0 if result.get("completed", True) else 1  # a dds run whose nodes failed for good, or Ctrl-C


if __name__ == "__main__":
    sys.exit(main())

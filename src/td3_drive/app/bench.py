"""Benchmarks: ``python -m td3_drive.bench {learner,policy,replay,pipeline,train,dds}``.

Each prints progress to stderr and one JSON object as the last line of stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch

from td3_drive import topics as T
from td3_drive.app.config import compose
from td3_drive.nodes.policy import PolicyNode
from td3_drive.nodes.preprocessor import CameraPreprocessorNode
from td3_drive.rl.inference import ActorRunner
from td3_drive.rl.learner import Learner, LearnerConfig
from td3_drive.rl.models import build_actor
from td3_drive.rl.replay import ReplayBuffer
from td3_drive.rl.synthetic import random_batch
from td3_drive.rl.weights import decode_actor, encode_actor
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, stamp


def _machine(device: str = "cpu") -> dict[str, Any]:
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4)}


def _time_calls(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


def bench_learner(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    learner = Learner(LearnerConfig(encoder_mode=args.encoder, algo=args.algo, augment=args.augment,
                                    precision=args.precision), args.device)
    batch = random_batch(args.batch, "cpu")  # the replay is on the host: the copy to the device is timed too
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def step() -> None:
        learner.update(batch)
        sync()

    samples = _time_calls(step, args.updates, args.warmup)
    total = sum(samples)
    return {"bench": "learner", "updates_per_s": round(args.updates / total, 3), "batch": args.batch,
            "encoder": args.encoder, "algo": args.algo, "device": args.device, "augment": args.augment,
            "precision": args.precision, "bf16": learner.bf16,
            **_percentiles(samples), "machine": _machine(args.device)}


def bench_policy(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or 1)
    runner = ActorRunner(LearnerConfig().actor_architecture(), device=args.device, backend=args.backend,
                         threads=args.threads or 1)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (4, T.FRAME_SIZE, T.FRAME_SIZE), dtype=np.uint8)
    state = rng.standard_normal(T.STATE_DIM).astype(np.float32)
    samples = _time_calls(lambda: runner(obs, state), args.iterations, 50)
    # what the policy does with each /td3/actor_weights message, between two controls
    weights = encode_actor(build_actor(runner.architecture), 1, runner.architecture)
    swaps = np.asarray(_time_calls(lambda: runner.load_state_dict(decode_actor(weights, runner.architecture).state_dict),
                                   args.swaps, 2)) * 1000
    return {"bench": "policy", "backend": runner.backend, "device": str(runner.device), "batch": 1,
            **_percentiles(samples), "weights_swap_p50_ms": round(float(np.percentile(swaps, 50)), 2),
            "weights_swap_max_ms": round(float(swaps.max()), 2), "machine": _machine(args.device)}


def measure_replay(capacity: int = 10_000, batch_size: int = 256) -> dict[str, float]:
    """Storage and speed figures of the replay buffer at 84x84, k=4, a 53-d state."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(capacity, n_step=3)
    frames = rng.integers(0, 256, size=(64, T.FRAME_SIZE, T.FRAME_SIZE), dtype=np.uint8)
    states = rng.standard_normal((64, T.STATE_DIM)).astype(np.float32)
    actions = rng.uniform(-1, 1, (64, 2)).astype(np.float32)
    add_ns = []
    buf.start_episode(frames[0], states[0])
    for i in range(capacity):
        end = i % 500 == 499
        t0 = time.perf_counter_ns()
        buf.add(actions[i % 64], 0.5, frames[i % 64], states[i % 64], terminated=end and i % 1000 == 999, truncated=end)
        add_ns.append(time.perf_counter_ns() - t0)
        if end:
            buf.start_episode(frames[(i + 1) % 64], states[(i + 1) % 64])
    buf.sample(batch_size)  # warm-up
    sample_ns = []
    for _ in range(50):
        t0 = time.perf_counter_ns()
        buf.sample(batch_size)
        sample_ns.append(time.perf_counter_ns() - t0)
    return {
        "bytes_per_transition": buf.bytes_per_transition,
        "sample_ms_p50": float(np.median(sample_ns)) / 1e6,
        "add_us_p50": float(np.median(add_ns)) / 1e3,
    }


def bench_replay(args: argparse.Namespace) -> dict[str, Any]:
    return {"bench": "replay", **measure_replay(capacity=args.capacity, batch_size=args.batch), "machine": _machine()}


def bench_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """800x600 bgra8 camera message -> preprocessing -> policy -> published control, in process."""
    torch.set_num_threads(1)
    runtime = LocalRuntime({"policy": {"explore": False, "publish_features": not args.no_features}})
    CameraPreprocessorNode(runtime.context("camera_preprocessor"))
    PolicyNode(runtime.context("policy"))
    tp = T.Topics()
    controls: list[float] = []
    runtime.add_tap(lambda topic, _t, _m, _s: controls.append(time.perf_counter()) if topic == tp.control else None)
    route = np.stack([np.linspace(0, 200, 201), np.zeros(201)], axis=1)
    header = lambda t: new_message(T.HEADER, stamp=stamp(t), frame_id="map")  # noqa: E731
    poses = [new_message("geometry_msgs/msg/PoseStamped", header=header(0.0),
                         pose=new_message("geometry_msgs/msg/Pose", position=new_message(
                             "geometry_msgs/msg/Point", x=float(x), y=float(y)),
                             orientation=new_message("geometry_msgs/msg/Quaternion", w=1.0))) for x, y in route]
    runtime.publish(tp.route, new_message(T.PATH, header=header(0.0), poses=poses))
    runtime.publish(tp.episode_start, new_message(T.HEADER, stamp=stamp(0.0)))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, 600 * 800 * 4, dtype=np.uint8)
    samples = []
    for i in range(args.iterations + 50):
        t = 0.05 * (i + 1)
        odom = new_message(T.ODOMETRY, header=header(t))
        odom.pose.pose.position.x = 0.4 * i
        odom.pose.pose.orientation.w = 1.0
        runtime.publish(tp.odometry, odom)
        runtime.spin()
        msg = new_message(T.IMAGE, header=new_message(T.HEADER, stamp=stamp(t), frame_id="rgb_front"), height=600,
                          width=800, encoding="bgra8", step=3200, data=image)
        start = time.perf_counter()
        runtime.publish(tp.camera, msg)
        runtime.spin()
        if i >= 50:
            samples.append(controls[-1] - start)
    return {"bench": "pipeline", "image": "800x600 bgra8", "features_published": not args.no_features,
            **_percentiles(samples), "machine": _machine()}


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Env steps/s of the embedded training loop at UTD 1, against the learner's own update rate."""
    from td3_drive.app import embedded  # the simulator's highway-env only where a bench runs it

    torch.set_num_threads(args.threads or torch.get_num_threads())
    run_dir = tempfile.mkdtemp(prefix="td3_bench_train_")
    params = compose("train", training=True)  # exactly what `td3-drive train` runs
    params.setdefault("trainer", {}).update({"run_dir": run_dir, "utd_ratio": 1.0, "learning_starts": args.warmup,
                              "batch_size": args.batch, "checkpoint_every": 0, "learner.encoder_mode": args.encoder,
                              "weights_every": 100})
    params.setdefault("policy", {})["random_steps"] = args.warmup
    graph = embedded.build_graph(params, bag_path=None)
    trainer = graph.nodes["trainer"]
    graph.run(args.warmup + 10)
    start_ticks, start_updates, start = graph.sim.ticks, trainer.session.learner.num_updates, time.perf_counter()
    graph.run(args.steps)
    wall = time.perf_counter() - start
    env_steps_per_s = (graph.sim.ticks - start_ticks) / wall
    updates = trainer.session.learner.num_updates - start_updates
    graph.close()
    # the learner alone, same config and batch size, on random batches
    learner = Learner(trainer.session.learner.config)
    batch = random_batch(args.batch, "cpu")
    samples = _time_calls(lambda: learner.update(batch), max(20, args.steps), 3)  # as many as the loop ran
    updates_per_s = len(samples) / sum(samples)
    return {"bench": "train", "env_steps_per_s": round(env_steps_per_s, 3), "updates_in_loop": updates,
            "learner_updates_per_s": round(updates_per_s, 3),
            "ratio": round(env_steps_per_s / updates_per_s, 3), "batch": args.batch, "encoder": args.encoder,
            "utd_ratio": 1.0, "machine": _machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m td3_drive.bench", description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("learner", help="TD3 updates per second on random batches")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--encoder", choices=["separate", "shared"], default="separate")
    p.add_argument("--algo", choices=["td3", "ddpg"], default="td3")
    p.add_argument("--augment", action="store_true")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="autocast of the network passes (bf16: needs native support to be faster)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p = sub.add_parser("policy", help="batch-1 actor latency")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "torch"], default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--swaps", type=int, default=20, help="weight hot-swaps timed (decode + load, as the node does)")
    p = sub.add_parser("replay", help="bytes per transition and sampling time")
    p.add_argument("--capacity", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=256)
    p = sub.add_parser("pipeline", help="800x600 bgra8 image message -> published control latency")
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--no-features", action="store_true", help="do not publish feature statistics")
    p = sub.add_parser("train", help="embedded training loop env steps/s at UTD 1 vs learner updates/s")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--encoder", choices=["separate", "shared"], default="shared")
    p.add_argument("--threads", type=int, default=0)
    p = sub.add_parser("dds", help="between processes over Cyclone DDS: image -> control, weights to 1 and 4 "
                                   "policies, reliable messages lost")
    p.add_argument("--ticks", type=int, default=400, help="image -> control: simulator ticks at 20 Hz, measured")
    p.add_argument("--warmup-ticks", type=int, default=40,
                   help="image -> control: ticks run first and left out of the percentiles (reported apart)")
    p.add_argument("--weight-messages", type=int, default=10, help="weight broadcasts per receiver count")
    p.add_argument("--reliable-count", type=int, default=10_000,
                   help="reliable messages sent at 20 Hz (10,000: 500 s; the rest runs meanwhile)")
    args = parser.parse_args(argv)
    if args.which == "dds":
        from td3_drive.app.bench_dds import bench_dds, check_ticks

        try:
            check_ticks(args.ticks, args.warmup_ticks)
        except ValueError as err:
            parser.error(str(err))  # before any process starts
        result = {**bench_dds(args), "machine": _machine()}
    else:
        result = {"learner": bench_learner, "policy": bench_policy, "replay": bench_replay,
                  "pipeline": bench_pipeline, "train": bench_train}[args.which](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m td3_drive.bench dds``: the node stack's middleware between real processes.

Three measurements, all on Cyclone DDS over loopback (``runtime.dds``), every figure taken
with one clock (CLOCK_MONOTONIC is system-wide, so times from different processes compare):

1. image -> control: the simulator, camera_preprocessor and policy in three processes, an
   800x600 bgra8 camera at 20 Hz of wall time; latency from the simulator starting a tick to
   it receiving the control stamped with that tick's camera stamp (the simulator's own
   measurement, in its exit report), after ``--warmup-ticks``, with the CPU steal meanwhile;
2. actor weights (the real encoded actor, ~7 MB, reliable + transient local as the trainer
   sends them) from this process to 1 and to 4 receiving processes: write to last arrival, the
   next broadcast once every receiver acknowledged the last;
3. reliable messages lost: ``--reliable-count`` sequence-numbered messages at 20 Hz to a
   receiving process while 1 and 2 run, counted per 10,000.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from td3_drive import topics as T
from td3_drive.app.processes import LARGE_MESSAGE_MALLOC, Supervisor, interrupt, node_processes, supervise
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS

WEIGHTS_TOPIC = "/bench/actor_weights"
RELIABLE_TOPIC = "/bench/reliable"
ACK_TOPIC = "/bench/ack"
#: how long a receiving process gets to write its arrivals after SIGINT before it is killed
RECEIVER_STOP_S = 20.0


def _receiver(kind: str, out: Path, expect: int) -> subprocess.Popen:
    # with the node processes' allocator settings: receive as the policy does
    return subprocess.Popen([sys.executable, "-m", "td3_drive.app.bench_dds", kind, str(out), str(expect),
                             str(os.getpid())], env={**LARGE_MESSAGE_MALLOC, **os.environ})


def receive_main(argv: list[str]) -> int:
    """A receiving process: arrival time of each message (its sequence number), as JSON, on exit."""
    kind, out, expect, parent = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    from td3_drive.runtime.dds import DdsRuntime
    from td3_drive.runtime.messages import new_message

    runtime = DdsRuntime({}, use_sim_time=False)
    signal.signal(signal.SIGINT, lambda *_: runtime.stop())
    arrivals: dict[int, float] = {}
    ctx = runtime.context(f"bench_{kind}_{os.getpid()}")
    if kind == "weights":
        ack = ctx.create_publisher(T.HEADER, ACK_TOPIC, RELIABLE_QOS)

        def on_weights(msg: Any) -> None:
            seq = int(msg.data[:4].view(np.uint32)[0])
            arrivals.setdefault(seq, time.monotonic())
            ack.publish(new_message(T.HEADER, frame_id=f"{os.getpid()}:{seq}"))

        ctx.create_subscription(T.UINT8_ARRAY, WEIGHTS_TOPIC, on_weights, LATCHED_QOS)
    else:
        ctx.create_subscription(T.HEADER, RELIABLE_TOPIC,
                                lambda m: arrivals.setdefault(int(m.frame_id), time.monotonic()), RELIABLE_QOS)
    runtime.spin(until=lambda: len(arrivals) >= expect or os.getppid() != parent)  # never outlive the bench
    out.write_text(json.dumps({str(k): v for k, v in arrivals.items()}))
    runtime.close()
    return 0


# --------------------------------------------------------------------------- 1. image -> control
def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot, from /proc/stat; None where there is none (not Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    return (values[7] if len(values) > 7 else 0), sum(values[:8])  # guest time is already in user


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """CPU time the hypervisor gave to others between two :func:`cpu_times`, in % (None: unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 2)


def latency_summary(latencies_ms: list[float], warmup: int) -> dict[str, Any]:
    """p50/p99/max over the answered ticks after the first ``warmup``; the warm-up's worst on its own."""
    measured = np.asarray(latencies_ms[warmup:])
    p50 = p99 = worst = None  # nothing answered after the warm-up: no figures
    if measured.size:
        p50, p99, worst = (round(float(v), 2) for v in (*np.percentile(measured, [50, 99]), measured.max()))
    return {"p50_ms": p50, "p99_ms": p99, "max_ms": worst, "measured_ticks": int(measured.size),
            "warmup_max_ms": max(latencies_ms[:warmup], default=None)}


def check_ticks(ticks: int, warmup: int) -> None:
    """ValueError unless the simulator keeps the latency of every tick run (its window is bounded)."""
    from td3_drive.sim.node import LATENCY_WINDOW

    if ticks <= 0 or warmup < 0 or ticks + warmup > LATENCY_WINDOW:
        raise ValueError(f"need 0 < ticks, 0 <= warm-up ticks and ticks + warm-up ticks <= {LATENCY_WINDOW} "
                         f"(the simulator's latency window), got {ticks} + {warmup}")


def image_to_control(ticks: int, warmup: int, scratch: Path) -> dict[str, Any]:
    """Run the pipeline for ``warmup + ticks`` ticks; latency over the ticks after the warm-up.

    The warm-up (the first answered ticks: first large writes, first receives, caches) is
    left out as benchmark tools do (Apex.AI performance_test ``--ignore``) and reported on
    its own; the CPU steal over the run is reported because on a VM it sets the tail."""
    from td3_drive.app import config

    check_ticks(ticks, warmup)
    params = config.compose("train", 0, [], {
        "simulator": {"image_width": 800, "image_height": 600, "camera_scaling": 15.0, "pace": "realtime"},
        "policy": {"explore": False, "lockstep": False}}, training=True)
    config.snapshot(scratch, params)
    children = node_processes(1, "policy", trainer=False, evaluator=False)
    children[0].args = ["--ticks", str(warmup + ticks), "--wait-for", str(len(children) - 1)]
    supervisor = Supervisor(children, scratch / "config.yaml", scratch / "processes", max_restarts=0)
    before = cpu_times()
    completed = supervise(supervisor, lambda clean: "simulator" in clean)
    steal = steal_percent(before, cpu_times())
    report = supervisor.reports()["simulator"]
    sim = report.get("status", {})
    return {"completed": completed, "ticks": sim.get("ticks"), "warmup_ticks": warmup,
            "camera": "800x600 bgra8 (1.92 MB)", "controls_received": sim.get("controls_received"),
            "ticks_without_control": sim.get("ticks_without_control"),
            **latency_summary(report.get("control_latencies_ms", []), warmup), "cpu_steal_percent": steal}


# --------------------------------------------------------------------------- 2. weights fan-out
def actor_weights() -> bytes:
    """The bytes the trainer publishes: the default actor, encoded as /td3/actor_weights carries it."""
    from td3_drive.rl.learner import Learner, LearnerConfig
    from td3_drive.rl.weights import encode_actor

    learner = Learner(LearnerConfig(), "cpu")
    return encode_actor(learner.actor(), 1, learner.config.actor_architecture())


def weights_fan_out(receivers: int, messages: int, scratch: Path) -> dict[str, Any]:
    from td3_drive.runtime.dds import DdsRuntime
    from td3_drive.runtime.messages import new_message

    payload = np.frombuffer(actor_weights(), dtype=np.uint8).copy()
    runtime = DdsRuntime({}, use_sim_time=False)
    ctx = runtime.context("bench_trainer")
    publisher = ctx.create_publisher(T.UINT8_ARRAY, WEIGHTS_TOPIC, LATCHED_QOS)
    acked: dict[int, int] = {}  # broadcast -> receivers that have it

    def on_ack(msg: Any) -> None:
        seq = int(msg.frame_id.split(":")[1])  # "<receiver pid>:<seq>"
        acked[seq] = acked.get(seq, 0) + 1

    ctx.create_subscription(T.HEADER, ACK_TOPIC, on_ack, RELIABLE_QOS)
    outs = [scratch / f"weights_{receivers}_{i}.json" for i in range(receivers)]
    procs = [_receiver("weights", out, messages) for out in outs]
    try:
        if not runtime.wait_for_subscribers(WEIGHTS_TOPIC, receivers, timeout_s=60):
            raise RuntimeError(f"only {publisher.subscribers()} of {receivers} weight receivers matched")
        time.sleep(1.0)  # discovery settles (the receivers' readers and their acks)
        sent: dict[int, float] = {}
        for seq in range(messages):
            payload[:4] = np.frombuffer(np.uint32(seq).tobytes(), dtype=np.uint8)  # receivers read, not decode
            sent[seq] = time.monotonic()
            publisher.publish(new_message(T.UINT8_ARRAY, data=payload))
            # the next broadcast once every receiver has this one: a latched topic keeps only the newest,
            # so back-to-back broadcasts would replace one another in flight (as the policy wants them to)
            runtime.spin(until=lambda seq=seq: acked.get(seq, 0) >= receivers, timeout_s=30)
            time.sleep(0.2)
        for proc in procs:
            proc.wait(timeout=60)
    finally:
        interrupt(procs, RECEIVER_STOP_S)
        runtime.close()
    arrivals = [json.loads(out.read_text()) if out.exists() else {} for out in outs]
    lost = sum(messages - len(a) for a in arrivals)
    latest = [max(a[str(seq)] for a in arrivals) - sent[seq] for seq in range(messages)
              if all(str(seq) in a for a in arrivals)]
    ms = np.asarray(latest) * 1e3
    return {"receivers": receivers, "bytes": int(payload.size), "messages": messages, "lost": lost,
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if latest else None,
            "max_ms": round(float(ms.max()), 2) if latest else None}


# --------------------------------------------------------------------------- 3. reliable stream
class ReliableStream:
    """``count`` sequence-numbered reliable messages at ``rate_hz`` to a receiving process, in a thread."""

    def __init__(self, count: int, rate_hz: float, scratch: Path) -> None:
        from td3_drive.runtime.dds import DdsRuntime

        self.count, self.rate_hz, self.out = count, rate_hz, scratch / "reliable.json"
        self.runtime = DdsRuntime({}, use_sim_time=False)
        self.publisher = self.runtime.context("bench_stream").create_publisher(T.HEADER, RELIABLE_TOPIC, RELIABLE_QOS)
        self.proc = _receiver("reliable", self.out, count)
        self.thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> None:
        if not self.runtime.wait_for_subscribers(RELIABLE_TOPIC, 1, timeout_s=60):
            raise RuntimeError("the reliable-stream receiver did not match")
        time.sleep(1.0)
        self.thread.start()

    def _send(self) -> None:
        from td3_drive.runtime.messages import new_message

        start = time.monotonic()
        for seq in range(self.count):
            time.sleep(max(0.0, start + seq / self.rate_hz - time.monotonic()))
            self.publisher.publish(new_message(T.HEADER, frame_id=str(seq)))

    def result(self) -> dict[str, Any]:
        self.thread.join()
        try:
            self.proc.wait(timeout=30)  # it exits once it has them all
        except subprocess.TimeoutExpired:
            interrupt([self.proc], RECEIVER_STOP_S)
        self.runtime.close()
        received = len(json.loads(self.out.read_text())) if self.out.exists() else 0
        lost = self.count - received
        return {"sent": self.count, "rate_hz": self.rate_hz, "received": received, "lost": lost,
                "lost_per_10000": round(lost / self.count * 10_000, 3), "write_failures": self.publisher.dropped}


def bench_dds(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="td3_bench_dds_") as tmp:
        scratch = Path(tmp)
        stream = ReliableStream(args.reliable_count, 20.0, scratch)
        try:
            stream.start()
            print("image -> control ...", file=sys.stderr)
            latency = image_to_control(args.ticks, args.warmup_ticks, scratch / "pipeline")
            weights = []
            for receivers in (1, 4):
                print(f"weights to {receivers} processes ...", file=sys.stderr)
                weights.append(weights_fan_out(receivers, args.weight_messages, scratch))
            print(f"reliable stream: waiting for its {args.reliable_count} messages ...", file=sys.stderr)
            reliable = stream.result()
        finally:
            interrupt([stream.proc], RECEIVER_STOP_S)
    return {"bench": "dds", "transport": "cyclonedds loopback", "image_to_control": latency,
            "weights": weights, "reliable": reliable}


if __name__ == "__main__":
    sys.exit(receive_main(sys.argv[1:]))

"""``--transport dds``: the node stack as one OS process per node, talking Cyclone DDS.

The command composes the parameters once (``run_dir/config.yaml``, the file the embedded run
keeps too) and starts every node as ``python -m td3_drive.app.processes KIND NAME``: the same
node classes as ``ros2 launch``, each on :mod:`td3_drive.runtime.dds`.  A :class:`Supervisor`
watches them: a child that dies is reported and started again (the trainer with ``resume``,
so it continues from its last checkpoint), Ctrl-C stops them all in order, and a child that
does not stop in time is killed, so a run never hangs.  Each child writes its counters to
``run_dir/processes/<name>.json`` when it exits; the supervisor follows /diagnostics for the
progress bar.  The simulators pace themselves on the wall clock (``pace: realtime`` for training,
``deadline`` for driving), so delivery is as asynchronous as on a real robot: a control can be
late or lost, and the world does not wait for it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from td3_drive.app.console import progress_bar
from td3_drive.runtime.parameters import for_node

#: how long a child gets to exit after SIGINT (the trainer writes its final checkpoint) before SIGKILL
STOP_TIMEOUT_S = 60.0
#: glibc hands every allocation over 128 KB back to the kernel when freed, so each camera frame or weight
#: message (MBs, several copies per hop) lands on fresh pages and pays a page fault per 4 KB: keeping
#: them in the heap took image -> control from 9.3-10.0 to 5.5-8.8 ms p50 in 4 interleaved pairs
#: (bench dds, 2 cores).  A value the user set wins.
LARGE_MESSAGE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(512 << 20)}
#: parameters of a dds training on top of the composed file (``--set`` still wins)
DDS_TRAIN_PARAMETERS: dict[str, dict[str, Any]] = {
    # 20 Hz of wall time, like CARLA in asynchronous mode; faster ("deadline": as fast as the policy
    # answers) outruns the trainer, whose readers then lose observations (counted: lost_observation)
    "simulator": {"pace": "realtime"},
    "trainer": {"async_updates": True},  # learn in a thread: the trainer's callbacks keep flowing
    "policy": {"lockstep": False},  # the world does not wait: the watchdog brakes when frames stop
}
#: ... of a dds drive: no trainer to keep up with, so the world runs as fast as the controls come
DDS_DRIVE_PARAMETERS: dict[str, dict[str, Any]] = {"simulator": {"pace": "deadline"}}


@dataclass
class Child:
    """One node process: its node name (``v0/policy``), kind (a ``NODE_KINDS`` key) and command line."""

    name: str
    kind: str
    args: list[str] = field(default_factory=list)
    restart_args: list[str] = field(default_factory=list)  # added when it is started again
    process: subprocess.Popen | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def file_name(self) -> str:
        return self.name.replace("/", "_")


def node_processes(vehicles: int, controller: str, trainer: bool, evaluator: bool) -> list[Child]:
    """The processes of a run: per vehicle simulator, camera_preprocessor and controller; then the trainer
    and/or the evaluator.  Names as in the embedded graph (``v<i>/...`` when there are several)."""
    prefixes = [""] if vehicles == 1 else [f"v{i}/" for i in range(vehicles)]
    children = []
    for prefix in prefixes:
        children += [Child(f"{prefix}simulator", "simulator"), Child(f"{prefix}camera_preprocessor", "camera_preprocessor"),
                     Child(f"{prefix}{'policy' if controller == 'policy' else 'classical_controller'}",
                           "policy" if controller == "policy" else "classical_controller")]
    if trainer:
        children.append(Child("trainer", "trainer", restart_args=["--resume"]))
    if evaluator:
        children.append(Child("evaluator", "evaluator"))
    return children


def interrupt(processes: list[subprocess.Popen], timeout_s: float) -> list[subprocess.Popen]:
    """SIGINT every process still running, give them ``timeout_s`` together to exit, then kill and
    reap the rest (never a hang, never a zombie); returns the processes it had to kill."""
    running = [proc for proc in processes if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    killed = []
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed.append(proc)
    return killed


class Supervisor:
    """Start, watch, restart and stop node processes."""

    def __init__(self, children: list[Child], params_file: Path, status_dir: Path, *, max_restarts: int = 3,
                 log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> None:
        self.children = children
        self.params_file, self.status_dir = Path(params_file), Path(status_dir)
        self.max_restarts = max_restarts
        self.log = log
        self.clean_exits: set[str] = set()
        self.failed: str | None = None
        self.stopping = False

    def command(self, child: Child, restart: bool = False) -> list[str]:
        return [sys.executable, "-m", "td3_drive.app.processes", child.kind, child.name, "--params",
                str(self.params_file), "--status", str(self.status_dir / f"{child.file_name}.json"),
                "--parent", str(os.getpid()), *child.args, *(child.restart_args if restart else [])]

    def start(self) -> None:
        self.status_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child, restart: bool = False) -> None:
        # a session of its own: the terminal's Ctrl-C reaches the supervisor, which stops children in order
        child.process = subprocess.Popen(self.command(child, restart), start_new_session=True,
                                         env={**LARGE_MESSAGE_MALLOC, **os.environ})

    def poll(self) -> None:
        """Note clean exits, restart crashed children (at most ``max_restarts`` times each)."""
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            code = child.process.returncode
            child.exit_codes.append(code)
            child.process = None
            if code == 0:
                self.clean_exits.add(child.name)
                continue
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            if self.stopping:
                self.log(f"[supervisor] {child.name} ended with {how} while stopping")
                continue
            if child.restarts >= self.max_restarts:
                self.failed = f"{child.name} died ({how}) after {child.restarts} restarts"
                self.log(f"[supervisor] {self.failed}: stopping the run")
                continue
            child.restarts += 1
            self.log(f"[supervisor] {child.name} died ({how}): restart {child.restarts}/{self.max_restarts}")
            self._spawn(child, restart=True)

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every child still running with SIGINT: the vehicle pipelines first, then the trainer (which
        writes its final checkpoint); a group still running ``timeout_s`` later is killed."""
        self.stopping = True
        started = [c for c in self.children if c.process is not None]
        for group in ([c for c in started if c.kind != "trainer"], [c for c in started if c.kind == "trainer"]):
            killed = interrupt([c.process for c in group], timeout_s)
            for child in group:
                if child.process in killed:
                    self.log(f"[supervisor] {child.name} did not stop within {timeout_s:.0f} s: killed")
        self.poll()

    def reports(self) -> dict[str, Any]:
        """Every child's exit report (``--status`` file), restarts and exit codes."""
        out = {}
        for child in self.children:
            path = self.status_dir / f"{child.file_name}.json"
            report = json.loads(path.read_text()) if path.exists() else {}
            out[child.name] = {**report, "restarts": child.restarts, "exit_codes": child.exit_codes}
        return out


def supervise(supervisor: Supervisor, finished: Callable[[set[str]], bool], progress: Callable[[], None] | None = None,
              poll_s: float = 0.2) -> bool:
    """Run the children until ``finished(clean exits)`` (True), a child fails for good or Ctrl-C (False)."""
    supervisor.start()
    try:
        while not finished(supervisor.clean_exits) and supervisor.failed is None:
            time.sleep(poll_s)
            supervisor.poll()
            if progress is not None:
                progress()
        return supervisor.failed is None
    except KeyboardInterrupt:
        supervisor.log("[supervisor] Ctrl-C: stopping every node")
        return False
    finally:
        supervisor.stop()


# --------------------------------------------------------------------------- commands
def one_clock(params: dict[str, dict[str, Any]], vehicles: int) -> dict[str, dict[str, Any]]:
    """Vehicle 0's simulator is the run's clock: with every simulator on /clock, each node's time would
    jump between worlds that drift apart (no lockstep between processes) and watchdogs fire on the jumps."""
    for i in range(1, vehicles):
        params[f"/v{i}/simulator"]["publish_clock"] = False
    return params


def train(options: Any, params: dict[str, dict[str, Any]], restarts: int = 3, bag_path: Path | None = None,
          bag_exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``td3-drive train --transport dds``: ``params`` composed (per vehicle) and kept in ``run_dir/config.yaml``;
    the supervisor records the bag (``bag_path``) from what the nodes publish over DDS."""
    run_dir = Path(options.run_dir)
    children = node_processes(options.vehicles, "policy", trainer=True, evaluator=False)
    steps = options.steps if options.steps is not None else int(for_node(params, "trainer").get("total_steps", 0))
    listeners = len(children) - 1 + (bag_path is not None)  # /clock readers: the other nodes, the bag's
    for child in children:
        if child.kind == "simulator":  # the first tick starts the episode
            child.args = ["--ticks", str(steps + 1), "--wait-for", str(listeners)]
    supervisor = Supervisor(children, run_dir / "config.yaml", run_dir / "processes", max_restarts=restarts)
    recorder = None
    if bag_path is not None:
        from td3_drive.app.embedded import bag_recorder

        recorder = bag_recorder(bag_path, options.vehicles, bag_exclude=bag_exclude)
    bar = progress_bar(steps, "train (dds)")
    start = time.perf_counter()
    sims = {c.name for c in children if c.kind == "simulator"}
    watch = DiagnosticsWatch(recorder)

    def progress() -> None:
        ticks = watch.values(min(sims)).get("ticks", 0)  # vehicle 0: the one --steps counts
        trainer = watch.values("trainer")
        bar.n = min(steps, max(0, int(ticks) - 1))
        bar.set_postfix(env_steps=trainer.get("env_steps", 0), upd=trainer.get("updates", 0), refresh=False)
        bar.refresh()

    try:
        completed = supervise(supervisor, lambda clean: sims <= clean, lambda: (watch.spin(), progress()))
    finally:
        bar.close()
        watch.close()
        if recorder is not None:
            recorder.close()
    wall = time.perf_counter() - start
    reports = supervisor.reports()
    trainer = reports["trainer"]
    returns = trainer.get("returns", [])
    return {
        "command": "train", "transport": "dds", "run_dir": str(run_dir), "completed": completed,
        "failure": supervisor.failed, "checkpoint": trainer.get("checkpoint"), "wall_s": round(wall, 1),
        "ticks": {name: reports[name].get("status", {}).get("ticks") for name in sorted(sims)},
        **{k: trainer.get("status", {}).get(k) for k in ("env_steps", "updates", "skipped_updates", "rollbacks")},
        "episodes": trainer.get("episodes"), "vehicles": options.vehicles,
        "bag": {"path": str(bag_path), "messages": recorder.counts} if recorder is not None else None,
        "return_first_5": _mean(returns[:5]), "return_last_5": _mean(returns[-5:]),
        "processes": reports,
    }


def drive(controller: str, checkpoint: str | None, protocol: Any, max_ticks: int, config_name: str,
          overrides: list[str], restarts: int = 3) -> dict[str, Any]:
    """``td3-drive drive --transport dds``: the protocol's episodes with simulator, camera_preprocessor,
    policy (or the PID controller) and evaluator each in its own process; no learning."""
    import tempfile

    from td3_drive.app import config
    from td3_drive.app.evaluation import eval_parameters
    from td3_drive.driving.metrics import EpisodeMetrics, summarize

    params = eval_parameters(controller, checkpoint, protocol, config_name, overrides, extra=DDS_DRIVE_PARAMETERS)
    children = node_processes(1, controller, trainer=False, evaluator=True)
    with tempfile.TemporaryDirectory(prefix="td3_drive_dds_") as scratch:
        config.snapshot(Path(scratch), params)
        for child in children:
            child.args = {"simulator": ["--ticks", str(max_ticks), "--wait-for", str(len(children) - 1)],
                          "evaluator": ["--episodes", str(protocol.episodes)]}.get(child.kind, [])
        supervisor = Supervisor(children, Path(scratch) / "config.yaml", Path(scratch) / "processes",
                                max_restarts=restarts)
        start = time.perf_counter()
        completed = supervise(supervisor, lambda clean: bool({"evaluator", "simulator"} & clean))
        reports = supervisor.reports()
    evaluator = reports["evaluator"]
    rows = [{"agent": controller, "episode": k, "seed": int(protocol.eval_seed) + k, "return": ret, **metrics}
            for k, (metrics, ret) in enumerate(zip(evaluator.get("episodes", []), evaluator.get("returns", [])), 1)]
    ticks = reports["simulator"].get("status", {}).get("ticks", 0)
    return {"command": "drive", "transport": "dds", "agent": controller, "completed": completed,
            "failure": supervisor.failed, "episodes": rows,
            "summary": summarize([EpisodeMetrics.from_dict(r) for r in rows]) if rows else None,
            "ticks": ticks, "max_ticks_reached": ticks >= max_ticks, "wall_s": round(time.perf_counter() - start, 2),
            "checkpoint": str(checkpoint) if checkpoint else None, "processes": reports}


def run_single_node(kind: str, name: str, config_name: str, overrides: list[str], run_dir: Path,
                    resume: bool = False) -> dict[str, Any]:
    """``td3-drive node KIND``: one node in this process on DDS, its peers elsewhere (a trainer on a
    pip-only GPU machine beside ``ros2 launch td3_drive train.launch.py start_trainer:=false``)."""
    from td3_drive.app import config

    extra = {"trainer": {"run_dir": str(run_dir), "resume": resume}} if kind == "trainer" else {}
    params = config.compose(config_name, None, overrides, config.merge(extra, {"trainer": {"async_updates": True}}),
                            training=True)
    config.snapshot(run_dir, params)
    status = run_dir / "processes" / f"{name.replace('/', '_')}.json"
    child_main([kind, name, "--params", str(run_dir / "config.yaml"), "--status", str(status)])
    return {"command": "node", "kind": kind, "name": name, **json.loads(status.read_text())}


class DiagnosticsWatch:
    """The supervisor's own DDS participant: the latest /diagnostics values of every node, and with a
    ``recorder`` (:class:`~td3_drive.runtime.bag.BagRecorder`) a bag of the topics it wants, in sim time."""

    def __init__(self, recorder: Any = None) -> None:
        from td3_drive import topics as T
        from td3_drive.runtime.dds import DdsRuntime
        from td3_drive.runtime.interface import RELIABLE_QOS

        self._latest: dict[str, dict[str, str]] = {}
        self._runtime = DdsRuntime({}, use_sim_time=True)
        self._runtime.context("supervisor").create_subscription(T.DIAGNOSTICS, "/diagnostics", self._on, RELIABLE_QOS)
        if recorder is not None:
            self._runtime.follow_clock()
            self._runtime.record(recorder.wants, recorder)

    def _on(self, msg: Any) -> None:
        for status in msg.status:
            self._latest[status.name.removeprefix("td3_drive/")] = {kv.key: kv.value for kv in status.values}

    def values(self, node: str) -> dict[str, Any]:
        return {k: int(v) if v.lstrip("-").isdigit() else v for k, v in self._latest.get(node, {}).items()}

    def spin(self) -> None:
        self._runtime.spin_once(0.0)

    def close(self) -> None:
        self._runtime.close()


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


# --------------------------------------------------------------------------- one child process
def exit_report(kind: str, node: Any) -> dict[str, Any]:
    """What a child leaves in its ``--status`` file: its counters, drops, and per kind what the command reports."""
    report: dict[str, Any] = {"kind": kind, "status": node.status(), "drops": dict(node.drops.counts)}
    if kind == "trainer":
        session = node.session
        latest = session.checkpointer.latest()
        report.update(episodes=session.episodes, returns=[r for _, r in session.episode_returns],
                      checkpoint=str(latest) if latest else None, resumed_from=session.resumed_from)
    elif kind == "evaluator":
        report.update(episodes=[m.to_dict() for m in node.episodes], returns=list(node.returns))
    elif kind == "simulator":  # each answered tick's control latency, oldest first (for histograms, bench dds)
        report["control_latencies_ms"] = [round(s * 1e3, 3) for s in node.control_latencies_s]
    return report


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m td3_drive.app.processes", description=__doc__.split("\n")[0])
    parser.add_argument("kind")
    parser.add_argument("name")
    parser.add_argument("--params", type=Path, required=True, help="ROS 2 parameter file (run_dir/config.yaml)")
    parser.add_argument("--status", type=Path, help="write the exit report (JSON) here")
    parser.add_argument("--ticks", type=int, help="simulator: exit after this many ticks")
    parser.add_argument("--episodes", type=int, help="evaluator: exit after this many episodes")
    parser.add_argument("--resume", action="store_true", help="trainer: continue from the newest checkpoint")
    parser.add_argument("--parent", type=int, help="exit when this process (the supervisor) is gone")
    parser.add_argument("--wait-for", type=int, default=0, help="simulator: start once this many nodes listen")
    args = parser.parse_args(argv)
    # a SIGINT while torch and the node load (seconds) ends the node as cleanly as one while it spins
    interrupted: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))

    import cv2
    import torch

    from td3_drive.app import config
    from td3_drive.app.embedded import NODE_KINDS
    from td3_drive.runtime import dds

    if args.kind != "trainer":
        torch.set_num_threads(1)  # the cores belong to the trainer's learner
        # OpenCV splits a resize across every core by default; in a one-frame-at-a-time pipeline that
        # gains nothing and makes the call wait on a worker that a sibling process has preempted
        cv2.setNumThreads(1)
    else:
        # the learner thread and the callbacks share the GIL: every DDS call releases it, and getting it
        # back waits out the learner's switch interval (5 ms by default) -- callbacks then crawl
        sys.setswitchinterval(0.0005)
        # the control path (simulator -> preprocessor -> policy) comes first; learning takes what is left
        os.nice(10)
    params = config.load_parameters(args.params)
    if args.resume:
        config.merge(params, {"trainer": {"resume": True}})

    def until(node: Any) -> bool:
        if interrupted or (args.parent is not None and os.getppid() != args.parent):
            return True  # stopped before spinning, or the supervisor was killed: do not run on as an orphan
        if args.ticks is not None and getattr(node, "ticks", 0) >= args.ticks:
            return True
        return args.episodes is not None and len(getattr(node, "episodes", ())) >= args.episodes

    def started(node: Any, runtime: Any) -> None:
        if args.kind != "simulator":
            return
        # every node process reads /clock: start the world once all of them listen, or go on after a minute
        if not runtime.wait_for_subscribers(node.topics.clock, args.wait_for, timeout_s=60.0):
            node.ctx.logger.warning(f"{args.name}: starting with fewer than {args.wait_for} nodes listening")
        node.start()

    node = dds.run_node(args.name, NODE_KINDS[args.kind], params, until=until, started=started)
    if args.status is not None:
        args.status.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(exit_report(args.kind, node), default=str))
        tmp.replace(args.status)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())

"""``--transport dds`` for real: one OS process per node, Cyclone DDS on loopback, faults by kill -9.

Every test runs ``td3-drive`` as a user does (a subprocess), in a DDS domain of its own, and
bounds its time.  What the processes did comes from their exit reports (the JSON summary) and
from /diagnostics, read here over DDS as ``ros2 topic echo`` would.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cyclonedds")

from td3_drive.app.processes import DiagnosticsWatch  # noqa: E402

SMALL = ["--set", "trainer.learning_starts=40", "--set", "policy.random_steps=40", "--set", "trainer.batch_size=16",
         "--set", "trainer.weights_every=20", "--set", "trainer.log_interval=1000"]


class Run:
    """``td3-drive ARGS`` in domain ``domain``; :meth:`result` waits for its JSON summary."""

    def __init__(self, args: list[str], domain: int, timeout_s: float = 240.0) -> None:
        self.env = {**os.environ, "ROS_DOMAIN_ID": str(domain)}
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen([sys.executable, "-m", "td3_drive", *args], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict:
        try:
            out, err = self.proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)  # the supervisor stops its children
            out, err = self.proc.communicate(timeout=90)
            pytest.fail(f"td3-drive did not finish in {self.timeout_s} s:\n{err[-3000:]}")
        assert self.proc.returncode == 0, err[-3000:]
        self.stderr = err
        return json.loads(out.strip().splitlines()[-1])


def child_pid(run_dir: Path, name: str) -> int | None:
    """The pid of the node process ``name`` of the run in ``run_dir`` (from /proc: what ps shows)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in argv]
        if "td3_drive.app.processes" in text and name in text[3:5] and any(str(run_dir) in a for a in text):
            return int(entry.name)
    return None


def wait_for(condition, timeout_s: float, what: str, watch: DiagnosticsWatch | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        if watch is not None:
            watch.spin()
        time.sleep(0.05)


_DOMAINS = itertools.count(210)


@pytest.fixture
def domain(monkeypatch) -> int:
    """A DDS domain per test (so a test's leftovers never reach the next), also for this process's watch."""
    number = next(_DOMAINS)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(number))
    return number


def test_training_over_dds_runs_every_node_in_its_own_process(tmp_path, domain):
    """A short training: four processes, the trainer learns from what arrives over DDS, all exit cleanly."""
    run = Run(["train", "--transport", "dds", "--steps", "300", "--run-dir", str(tmp_path), *SMALL], domain)
    summary = run.result()
    procs = summary["processes"]
    assert summary["completed"] and summary["failure"] is None
    assert set(procs) == {"simulator", "camera_preprocessor", "policy", "trainer"}
    for name, report in procs.items():
        assert report["exit_codes"] == [0] and report["restarts"] == 0, name
    assert summary["ticks"] == {"simulator": 301}
    sim = procs["simulator"]["status"]
    assert sim["controls_received"] >= 240  # the world ran on the policy's controls (realtime: a late one misses its tick)
    latencies = procs["simulator"]["control_latencies_ms"]  # one per tick answered in time, as bench dds reads them
    assert 0 < len(latencies) <= sim["controls_received"] and all(0 < ms < 1000 for ms in latencies)
    assert sim["control_latency_p50_ms"] == pytest.approx(np.percentile(latencies, 50), abs=0.01)
    assert summary["env_steps"] >= 180 and summary["updates"] > 0
    assert procs["policy"]["status"]["weights_version"] > 0  # it drove with weights the trainer sent
    assert Path(summary["checkpoint"]).is_dir()
    # the supervisor recorded the bag over DDS, as the embedded run records it: rewards in sim time, controls
    from td3_drive.runtime.bag import read_bag

    rewards = [t_ns * 1e-9 for topic, _, _, t_ns in read_bag(tmp_path / "bag", ["/td3/reward"])]
    assert len(rewards) >= 150 and summary["bag"]["messages"]["/td3/reward"] == len(rewards)
    assert all(0 < t <= 301 * 0.05 + 1e-9 for t in rewards)  # sim time, not the wall clock
    assert summary["bag"]["messages"].get("/carla/ego_vehicle/vehicle_control_cmd", 0) >= 250
    assert "/td3/actor_weights" not in summary["bag"]["messages"]
    assert json.loads((Path(summary["checkpoint"]) / "state.json").read_text())["state"]["env_steps"] == \
        summary["env_steps"]


def test_a_killed_policy_is_restarted_gets_the_latched_weights_and_drives_again(tmp_path, domain):
    run = Run(["train", "--transport", "dds", "--steps", "500", "--run-dir", str(tmp_path), *SMALL, "--no-bag"], domain)
    watch = DiagnosticsWatch()
    try:
        wait_for(lambda: watch.values("policy").get("weights_version", -1) > 0, 150, "trained weights", watch)
        pid = child_pid(tmp_path, "policy")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # the restarted policy: a new process that publishes diagnostics with the trainer's weights
        wait_for(lambda: (child_pid(tmp_path, "policy") or pid) != pid, 30, "a new policy process")
    finally:
        watch.close()
    summary = run.result()
    policy = summary["processes"]["policy"]
    assert policy["restarts"] == 1 and policy["exit_codes"] == [-signal.SIGKILL, 0], run.stderr[-3000:]
    assert "policy died (signal 9): restart 1/3" in run.stderr
    # the exit report is the restarted process's: it received the latched weights and acted on them
    assert policy["status"]["weights_version"] > 0 and policy["status"]["actions"] > 50
    # and the world drove on the controls of both processes (the first acted before it had trained weights)
    assert summary["processes"]["simulator"]["status"]["controls_received"] >= policy["status"]["actions"] + 40


def test_a_killed_trainer_resumes_from_its_checkpoint(tmp_path, domain):
    """kill -9 mid-run: the supervisor restarts the trainer with --resume; it continues from the newest
    checkpoint with every counter and the whole replay buffer that checkpoint holds."""
    args = ["train", "--transport", "dds", "--steps", "500", "--run-dir", str(tmp_path), *SMALL, "--no-bag",
            "--set", "trainer.checkpoint_every=80", "--set", "trainer.checkpoint_replay=true"]
    run = Run(args, domain)
    checkpoints = tmp_path / "checkpoints"
    wait_for(lambda: checkpoints.is_dir() and any(p.name.startswith("step_") for p in checkpoints.iterdir()),
             150, "a checkpoint")
    pid = child_pid(tmp_path, "trainer")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    newest_at_kill = max(p for p in checkpoints.iterdir() if p.name.startswith("step_"))
    saved = json.loads((newest_at_kill / "state.json").read_text())  # before the restarted trainer rotates it
    summary = run.result()

    trainer = summary["processes"]["trainer"]
    assert trainer["restarts"] == 1 and trainer["exit_codes"] == [-signal.SIGKILL, 0], run.stderr[-3000:]
    resumed = trainer["resumed_from"]
    assert resumed["checkpoint"] == str(newest_at_kill)
    assert resumed["env_steps"] == saved["state"]["env_steps"] and resumed["episodes"] == saved["state"]["episodes"]
    assert resumed["replay_written"] == [saved["replay"]["total"]] and saved["replay"]["total"] >= 80
    assert summary["env_steps"] > resumed["env_steps"] and summary["updates"] > resumed["updates"]


def test_learning_never_holds_up_a_control(tmp_path, domain):
    """The world ticks at 20 Hz of wall time (pace: realtime): while the trainer's learner thread runs, the policy answers >= 90 % of
    the camera frames (counted over the seconds in which the trainer's update count rose)."""
    run = Run(["train", "--transport", "dds", "--steps", "400", "--run-dir", str(tmp_path), *SMALL, "--no-bag",
               "--set", "trainer.batch_size=64", "--set", "trainer.weights_every=100"], domain)
    watch = DiagnosticsWatch()
    samples: list[tuple[int, int, int]] = []  # (sim ticks, ticks without control, trainer updates)
    try:
        while run.proc.poll() is None:
            watch.spin()
            sim, trainer = watch.values("simulator"), watch.values("trainer")
            if "ticks" in sim and "updates" in trainer:
                sample = (sim["ticks"], sim["ticks_without_control"], trainer["updates"])
                if not samples or sample != samples[-1]:
                    samples.append(sample)
            time.sleep(0.05)
    finally:
        watch.close()
    summary = run.result()
    learning = [s for s in samples if s[2] > 0]
    assert len(learning) >= 5, samples
    (t0, missed0, u0), (t1, missed1, u1) = learning[0], learning[-1]
    assert u1 - u0 >= 20 and t1 - t0 >= 100  # the learner ran for seconds
    answered = 1 - (missed1 - missed0) / (t1 - t0)
    assert answered >= 0.9, (answered, samples)
    assert summary["completed"]


def test_drive_over_dds_with_the_pid_controller(domain):
    """Deployment as processes: simulator, preprocessor, PID controller and evaluator; the evaluator's
    episodes come back as the summary's metrics."""
    summary = Run(["drive", "--transport", "dds", "--controller", "pid", "--episodes", "1", "--route-length", "80",
                   "--no-traffic"], domain, timeout_s=180).result()
    assert summary["completed"] and summary["failure"] is None
    assert set(summary["processes"]) == {"simulator", "camera_preprocessor", "classical_controller", "evaluator"}
    assert len(summary["episodes"]) == 1
    episode = summary["episodes"][0]
    assert episode["route_completion"] > 0.9 and episode["collisions"] == 0, episode
    assert summary["summary"]["n"] == 1


def test_one_node_alone_until_ctrl_c(tmp_path, domain):
    """``td3-drive node policy``: one node in the foreground (its peers elsewhere); Ctrl-C ends it cleanly
    with its exit report as the summary."""
    run = Run(["node", "policy", "--run-dir", str(tmp_path), "--set", "policy.explore=false"], domain, timeout_s=60)
    wait_for(lambda: (tmp_path / "config.yaml").exists(), 30, "the node's parameter file")
    time.sleep(1.0)  # whether it is still loading torch or already spinning, SIGINT ends it cleanly
    run.proc.send_signal(signal.SIGINT)
    summary = run.result()
    assert summary["command"] == "node" and summary["kind"] == "policy" and summary["name"] == "policy"
    assert summary["status"]["actions"] == 0 and summary["drops"] == {}  # nothing drove: no simulator here

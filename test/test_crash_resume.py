"""kill -9 during `td3-drive train --deterministic`, resume, and end bit-identical to an uninterrupted run.

Each `train` is a real subprocess killed with SIGKILL at a random moment (startup, mid-episode,
mid-checkpoint write...).  After every kill, every complete checkpoint must verify; the final
resumed run must end with the same model.safetensors bytes as a run that was never killed.
Seeded: set TD3_CRASH_SEED to replay a failing schedule.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from td3_drive.rl.checkpoint import Checkpointer

STEPS = 120
ARGS = ["--steps", str(STEPS), "--no-bag", "--deterministic", "--seed", "3",
        "--set", "trainer.learning_starts=20", "--set", "trainer.batch_size=8",
        "--set", "trainer.reward.max_episode_steps=30", "--set", "policy.random_steps=30",
        "--set", "trainer.replay_capacity=1000", "--set", "trainer.weights_every=10"]


def _cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "td3_drive", "train", "--run-dir", str(run_dir), "--resume", *ARGS]


def _finish(run_dir: Path) -> dict:
    out = subprocess.run(_cmd(run_dir), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _final_model(result: dict) -> bytes:
    return (Path(result["checkpoint"]) / "model.safetensors").read_bytes()


def test_kill_9_and_resume_is_bit_identical(tmp_path: Path) -> None:
    seed = int(os.environ.get("TD3_CRASH_SEED", "20261125"))
    rng = random.Random(seed)
    t0 = time.perf_counter()
    reference = _finish(tmp_path / "reference")
    one_run_s = time.perf_counter() - t0
    assert reference["ticks"] == STEPS + 1 and reference["resumed_at_tick"] == 0

    run_dir = tmp_path / "killed"
    checkpointer = Checkpointer(run_dir / "checkpoints")
    schedule = []
    for _ in range(3):
        # anywhere from interpreter start-up to the last ticks of a full run
        delay = rng.uniform(0.3, 0.95) * one_run_s
        proc = subprocess.Popen(_cmd(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        # a run that ended by itself must have succeeded; a killed one must have been alive until the kill
        # (or have just finished, successfully: a resumed run can end between poll() and kill())
        expected = (0,) if finished else (0, -signal.SIGKILL)
        assert proc.returncode in expected, (seed, delay, stderr[-3000:])
        for path in checkpointer.list():
            assert checkpointer.verify(path), f"corrupt checkpoint {path} after kill at {delay:.2f} s (seed {seed})"
        schedule.append((round(delay, 2), [p.name for p in checkpointer.list()]))

    resumed = _finish(run_dir)
    # where the kills landed: at least one after a checkpoint was written, so the last run resumed
    # mid-run from a killed run's checkpoint (kills that all land before the first one test nothing)
    assert any(names for _, names in schedule), (seed, schedule)
    assert resumed["resumed_at_tick"] > 0, (seed, schedule)
    assert resumed["ticks"] == reference["ticks"], (seed, schedule)
    assert resumed["env_steps"] == reference["env_steps"], (seed, schedule)
    assert resumed["updates"] == reference["updates"], (seed, schedule)
    assert _final_model(resumed) == _final_model(reference), f"weights differ (seed {seed}, kills {schedule})"
    for path in checkpointer.list():
        assert checkpointer.verify(path)
    # resuming a finished run does not run it again: ticks already done count toward --steps
    again = _finish(run_dir)
    assert again["resumed_at_tick"] > 0 and again["ticks"] == reference["ticks"]
    assert _final_model(again) == _final_model(reference)
    print(f"crash schedule (seed {seed}): {schedule}; one run {one_run_s:.1f} s; "
          f"total {time.perf_counter() - t0:.1f} s; final resume at tick {resumed['resumed_at_tick']}")

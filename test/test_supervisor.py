"""The process supervisor of ``--transport dds``, on stand-in children (no DDS, seconds)."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from td3_drive.app import config
from td3_drive.app.processes import Child, Supervisor, node_processes, one_clock, supervise


class ScriptedSupervisor(Supervisor):
    """Each child runs a Python snippet instead of a node: ``scripts[name]``, with ``RESTART`` set on a restart."""

    def __init__(self, children, scripts, tmp_path: Path, **kwargs) -> None:
        self.lines: list[str] = []
        super().__init__(children, tmp_path / "config.yaml", tmp_path / "processes", log=self.lines.append, **kwargs)
        self.scripts = scripts

    def command(self, child: Child, restart: bool = False) -> list[str]:
        # as td3_drive.app.processes does first: a SIGINT handler of its own, so that a run started
        # from a script in the background (SIGINT inherited as ignored) still stops on the supervisor's SIGINT
        handler = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        return [sys.executable, "-c", handler + f"RESTART = {restart}\n" + self.scripts[child.name]]


def test_a_crashed_child_is_restarted_with_its_restart_arguments_and_a_clean_exit_ends_the_run(tmp_path):
    marker = tmp_path / "restarted"
    scripts = {
        "worker": f"import os, pathlib, time\nif RESTART:\n    pathlib.Path({str(marker)!r}).touch()\n"
                  "    raise SystemExit(0)\ntime.sleep(0.2)\nos.kill(os.getpid(), 9)",
        "idle": "import time\ntime.sleep(60)",
    }
    sup = ScriptedSupervisor([Child("worker", "trainer"), Child("idle", "policy")], scripts, tmp_path)
    start = time.monotonic()
    assert supervise(sup, lambda clean: "worker" in clean, poll_s=0.05)
    assert marker.exists()
    worker, idle = sup.child("worker"), sup.child("idle")
    assert worker.restarts == 1 and worker.exit_codes == [-signal.SIGKILL, 0]
    assert any("worker died (signal 9): restart 1/3" in line for line in sup.lines)
    assert idle.exit_codes and idle.restarts == 0  # stopped with SIGINT at the end, not restarted
    assert time.monotonic() - start < 20


def test_a_child_that_keeps_dying_fails_the_run(tmp_path):
    sup = ScriptedSupervisor([Child("broken", "policy")], {"broken": "raise SystemExit(3)"}, tmp_path, max_restarts=2)
    assert not supervise(sup, lambda clean: False, poll_s=0.05)
    assert sup.child("broken").exit_codes == [3, 3, 3]
    assert sup.failed == "broken died (exit code 3) after 2 restarts"


def test_stop_kills_a_child_that_ignores_sigint(tmp_path):
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)"
    sup = ScriptedSupervisor([Child("stubborn", "trainer")], {"stubborn": stubborn}, tmp_path)
    sup.start()
    time.sleep(1.0)  # its handler is installed
    start = time.monotonic()
    sup.stop(timeout_s=1.0)
    assert time.monotonic() - start < 5
    assert sup.child("stubborn").exit_codes == [-signal.SIGKILL]
    assert any("did not stop within 1 s: killed" in line for line in sup.lines)


def test_process_layout_and_one_clock_per_run():
    names = [c.name for c in node_processes(2, "policy", trainer=True, evaluator=False)]
    assert names == ["v0/simulator", "v0/camera_preprocessor", "v0/policy", "v1/simulator",
                     "v1/camera_preprocessor", "v1/policy", "trainer"]
    assert [c.kind for c in node_processes(1, "pid", trainer=False, evaluator=True)] == [
        "simulator", "camera_preprocessor", "classical_controller", "evaluator"]
    params = one_clock(config.vehicle_parameters({"trainer": {}}, 3), 3)
    assert "publish_clock" not in params["/v0/simulator"]
    assert params["/v1/simulator"]["publish_clock"] is False and params["/v2/simulator"]["publish_clock"] is False

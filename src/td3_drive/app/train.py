"""The embedded training loop: compose the parameters, build the graph, tick it, keep what was trained.

``td3-drive train`` and ``td3-drive compare`` both run :func:`train`.  The final
checkpoint is written however the loop ends (Ctrl-C included).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from td3_drive.app import config, embedded, processes
from td3_drive.app.console import progress_bar
from td3_drive.runtime.parameters import for_node


@dataclass
class TrainOptions:
    """What one training run is (``td3-drive train``'s flags)."""

    run_dir: Path = Path("runs/latest")
    config: str = "train"
    steps: int | None = None  # simulator ticks (None: trainer.total_steps)
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)  # --set node.param=value
    resume: bool = False
    vehicles: int = 1
    bag: bool = True  # record an MCAP bag of the /td3 topics and the controls
    bag_observations: bool = False  # ... with the observation images
    deterministic: bool = False  # CPU, one thread, deterministic kernels, exact resume points
    transport: str = "embedded"  # embedded: one process, lockstep | dds: one process per node over Cyclone DDS
    restarts: int = 3  # dds: times a crashed node process is started again

    def argv(self) -> list[str]:
        """The ``td3-drive train`` command line that runs exactly this (kept with the run)."""
        flags = ["train", "--run-dir", str(self.run_dir), "--config", self.config, "--vehicles", str(self.vehicles)]
        flags += ["--steps", str(self.steps)] if self.steps is not None else []
        flags += ["--seed", str(self.seed)] if self.seed is not None else []
        flags += ["--transport", self.transport, "--restarts", str(self.restarts)] if self.transport != "embedded" else []
        for item in self.overrides:
            flags += ["--set", item]
        switches = {"--resume": self.resume, "--no-bag": not self.bag, "--bag-observations": self.bag_observations,
                    "--deterministic": self.deterministic}
        return flags + [name for name, on in switches.items() if on]


def train(options: TrainOptions, argv: list[str] | None = None) -> dict[str, Any]:
    """Run one training and return its summary (the JSON line ``td3-drive train`` prints).  ``argv``:
    the command line to keep in ``run_dir/command.json`` (default: the one ``options`` stand for)."""
    run_dir = Path(options.run_dir)
    if options.vehicles < 1:
        raise SystemExit("--vehicles must be >= 1")
    extra: config.Parameters = {"trainer": {"run_dir": str(run_dir), "resume": options.resume}}
    if options.transport not in ("embedded", "dds"):
        raise SystemExit(f"--transport must be embedded or dds, got {options.transport!r}")
    if options.deterministic:
        if options.transport == "dds":
            raise SystemExit("--deterministic needs the embedded transport (separate processes are not lockstep)")
        config.make_deterministic()
        config.merge(extra, config.DETERMINISTIC)
    if options.transport == "dds":
        config.merge(extra, processes.DDS_TRAIN_PARAMETERS)
    params = config.compose(options.config, options.seed, options.overrides, extra, training=True)
    if options.vehicles > 1 and for_node(params, "trainer").get("checkpoint_episodes"):
        raise SystemExit("--deterministic (exact resume points) needs one vehicle")
    command = argv or ["td3-drive", *options.argv()]
    run_params = config.vehicle_parameters(params, options.vehicles)
    if options.transport == "dds":
        run_params = processes.one_clock(run_params, options.vehicles)
    config.snapshot(run_dir, run_params, command)
    exclude = tuple(t for t in embedded.BAG_EXCLUDE
                    if not (options.bag_observations and t.endswith("/observation/image")))
    bag_path = fresh_bag_path(run_dir) if options.bag else None
    if options.transport == "dds":
        return processes.train(options, run_params, options.restarts, bag_path, exclude)
    graph = embedded.build_graph(params, bag_path=bag_path, bag_exclude=exclude, vehicles=options.vehicles)
    trainer, policy = graph.nodes["trainer"], graph.of_kind("policy")[0]
    session = trainer.session
    steps = options.steps if options.steps is not None else session.config.total_steps
    start = time.perf_counter()
    start_steps = session.env_steps
    # a resume from an episode-boundary checkpoint restored the simulator's tick count: ticks already
    # run count toward --steps, so a resumed run stops at the same total as an uninterrupted one
    graph.start()

    def ticks_run() -> int:  # the first tick is the episode start, not a step
        return graph.sim.ticks - 1

    done_ticks = ticks_run()
    bar = progress_bar(steps, "train")

    def on_progress() -> None:
        bar.n = min(steps, ticks_run())
        last = session.episode_returns[-1][1] if session.episode_returns else float("nan")
        elapsed = time.perf_counter() - start
        bar.set_postfix(steps_s=f"{(ticks_run() - done_ticks) / max(elapsed, 1e-9):.1f}", ret=f"{last:.1f}",
                        feat_l2=f"{policy.last_feature_l2:.1f}", upd=session.learner.num_updates, refresh=False)
        bar.refresh()

    try:
        graph.run(max(0, steps - done_ticks), on_progress)
    finally:
        bar.close()
        checkpoint = session.save_checkpoint()
        graph.close()
    wall = time.perf_counter() - start
    returns = [r for _, r in session.episode_returns]
    return {
        "command": "train", "run_dir": str(run_dir), "checkpoint": str(checkpoint), "ticks": graph.sim.ticks,
        "env_steps": session.env_steps, "new_env_steps": session.env_steps - start_steps,
        "updates": session.learner.num_updates, "episodes": session.episodes, "wall_s": round(wall, 1),
        "steps_per_s": round((ticks_run() - done_ticks) / wall, 2), "resumed_at_tick": done_ticks,
        "vehicles": options.vehicles, "env_steps_per_s": round((session.env_steps - start_steps) / wall, 2),
        "rollbacks": session.rollbacks,
        "return_first_5": _mean(returns[:5]), "return_last_5": _mean(returns[-5:]),
        "skipped_updates": session.learner.health.total_skipped, "drops": graph.drop_counts(),
    }


def fresh_bag_path(run_dir: Path) -> Path:
    """``run_dir/bag``, or ``bag_1``, ``bag_2``... when a resumed run already recorded one."""
    n = 0
    while (run_dir / f"bag{'' if n == 0 else f'_{n}'}").exists():
        n += 1
    return run_dir / f"bag{'' if n == 0 else f'_{n}'}"


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None

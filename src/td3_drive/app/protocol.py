"""What an evaluation and a comparison are: the evaluation protocol, the compared agents, compare presets.

Episode k (1..N) of an evaluation runs on simulator seed ``eval_seed + k``, so every
agent and the classical controller see exactly the same scenarios.  Training seeds
use simulator seeds ``seed * 1000 + k`` (``app.config.compose``), far from the
default ``eval_seed`` of 1_000_000.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from td3_drive.app.config import CONFIG_DIR, find_config
from td3_drive.driving.reward import RewardConfig

PRESET_DIR = CONFIG_DIR / "presets"
DEFAULT_EVAL_SEED = 1_000_000
#: the agents of the comparison: name -> (label, --set overrides of `td3-drive train`)
AGENTS: dict[str, tuple[str, list[str]]] = {
    "td3_ln": ("TD3 + LayerNorm", []),
    "ddpg": ("DDPG (same architecture)", ["trainer.learner.algo=ddpg"]),
    "td3_no_ln": ("TD3 without LayerNorm", ["trainer.learner.layer_norm=false"]),
}
PID = "pid"
PID_LABEL = "PID + Pure Pursuit (classical)"
#: Pure Pursuit + IDM gap keeping on the simulator's true lead distance: proves the hazards solvable
PRIVILEGED = "privileged"
PRIVILEGED_LABEL = "Pure Pursuit + IDM, privileged (reference)"
#: what the controller node of each driver is
CONTROLLERS = ("policy", PID, PRIVILEGED)
#: eval --image: the camera as it is, all zeros, or another episode's frames (sim/ablation in the preprocessor)
IMAGE_MODES = ("camera", "blank", "shuffled")


@dataclass(frozen=True)
class Protocol:
    """The evaluation protocol: what an episode is and when it counts as a success.

    Every episode starts at a seeded random point of the lap, on either lane
    (simulator ``random_start``), and follows a route of ``route_length_m`` along
    its starting lane.  A ``hazard_share`` of the episodes has a hazard in the ego's
    lane (sim/hazards.py: a lead that brakes to a stop and holds, a slow lead, a
    cut-in), which only the camera shows.  Success = route completed without a
    collision and without leaving the route corridor (``max_lateral_deviation``),
    within a time limit that a car averaging ``min_speed_fraction`` of the reward's
    target speed still meets, plus ``wait_allowance_s`` to stop and wait behind a
    hazard.  Episode k (1..N) runs on simulator seed ``eval_seed + k``.

    The default is the hazards protocol; :meth:`named` ("clean") gives the earlier one,
    lane following among traffic that almost never meets the ego.
    """

    route_length_m: float = 200.0
    episodes: int = 20
    eval_seed: int = DEFAULT_EVAL_SEED
    traffic: bool = True  # False: no other vehicles (proves routes, starts and time limit, not the learner)
    min_speed_fraction: float = 0.5
    hazard_share: float = 0.5
    wait_allowance_s: float = 20.0
    name: str = "hazards"

    @classmethod
    def named(cls, name: str, **fields: Any) -> "Protocol":
        """``hazards`` (the default) or ``clean`` (no hazard, no wait allowance), with ``fields`` changed."""
        if name not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
        return cls(**{**PROTOCOLS[name], "name": name, **fields})

    def time_limit_steps(self, target_speed: float, dt: float) -> int:
        seconds = self.route_length_m / (self.min_speed_fraction * target_speed) + self.wait_allowance_s
        return math.ceil(round(seconds / dt, 9))

    def describe(self) -> str:
        """'20 episodes of 200 m from random starts, with traffic, 50 % with a hazard'."""
        hazards = f", {100 * self.hazard_share:.0f} % with a hazard" if self.hazard_share else ", no hazards"
        return (f"{self.episodes} episodes of {self.route_length_m:.0f} m from random starts, "
                f"{'with' if self.traffic else 'without'} traffic{hazards}")

    def parameters(self) -> dict[str, dict[str, Any]]:
        """Node parameters that set the protocol up (applied before any --set override)."""
        # the simulator's first episode is its number 0, on its base seed: base eval_seed + 1 makes protocol
        # episode k (1..N) run on eval_seed + k, as the rows say
        simulator: dict[str, Any] = {"random_start": True, "route_length_m": float(self.route_length_m),
                                     "seed": int(self.eval_seed) + 1, "hazard_share": float(self.hazard_share)}
        if not self.traffic:  # no other vehicle at all: no hazard car either
            simulator["other_vehicles"], simulator["hazard_share"] = 0, 0.0
        reward = RewardConfig()
        return {"simulator": simulator,
                "evaluator": {"reward.max_episode_steps": self.time_limit_steps(reward.target_speed, reward.dt)}}


#: the named protocols: the fields that differ from the dataclass defaults
PROTOCOLS: dict[str, dict[str, Any]] = {
    "hazards": {},
    "clean": {"hazard_share": 0.0, "wait_allowance_s": 0.0},
}


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
    eval_protocol: str = Protocol.name
    eval_max_ticks: int = 100_000
    eval_config: str = "drive"
    eval_set: list[str] = field(default_factory=list)
    curve_points: int = 50
    #: episodes per kept checkpoint of every run for the value-overestimation measurement (0: none)
    overestimation_episodes: int = 3

    def protocol(self) -> Protocol:
        return Protocol.named(self.eval_protocol, route_length_m=self.eval_route_length_m,
                              episodes=self.eval_episodes, eval_seed=self.eval_seed)


def load_preset(name_or_path: str) -> Preset:
    """A preset by name (config/presets/<name>.yaml) or path."""
    path = Path(name_or_path)
    if not path.is_file():
        try:  # config/presets/ in the source tree, or share/td3_drive/config/presets when installed
            path = find_config(f"presets/{name_or_path}")
        except FileNotFoundError:
            known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            raise SystemExit(f"unknown preset {name_or_path!r} (known: {known})") from None
    raw = yaml.safe_load(path.read_text()) or {}
    train, ev = raw.get("train", {}) or {}, raw.get("eval", {}) or {}
    # YAML key -> Preset field, with its type; absent keys keep the dataclass defaults
    given = {
        "description": raw.get("description"), "agents": raw.get("agents"), "curve_points": raw.get("curve_points"),
        "overestimation_episodes": raw.get("overestimation_episodes"),
        "steps": train.get("steps"), "seeds": train.get("seeds"), "train_config": train.get("config"),
        "train_set": train.get("set"), "eval_episodes": ev.get("episodes"), "eval_seed": ev.get("seed"),
        "eval_max_ticks": ev.get("max_ticks"), "eval_config": ev.get("config"), "eval_set": ev.get("set"),
        "eval_route_length_m": ev.get("route_length_m"), "eval_protocol": ev.get("protocol"),
    }
    cast = {"steps": int, "curve_points": int, "overestimation_episodes": int, "eval_episodes": int, "eval_seed": int, "eval_max_ticks": int,
            "eval_route_length_m": float,
            "seeds": lambda v: [int(x) for x in v], "agents": list, "train_set": list, "eval_set": list}
    preset = Preset(name=raw.get("name", path.stem),
                    **{k: cast.get(k, lambda v: v)(v) for k, v in given.items() if v is not None})
    check_agents(preset.agents, f"preset {preset.name}: ")
    return preset


def check_agents(agents: list[str], where: str = "") -> None:
    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        raise SystemExit(f"{where}unknown agents {unknown} (known: {list(AGENTS)})")

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


@dataclass(frozen=True)
class Protocol:
    """The evaluation protocol: what an episode is and when it counts as a success.

    Every episode starts at a seeded random point of the lap, on either lane
    (simulator ``random_start``), and follows a route of ``route_length_m`` along
    its starting lane.  Success = route completed without a collision and without
    leaving the route corridor (``max_lateral_deviation``), within a time limit
    that a car averaging ``min_speed_fraction`` of the reward's target speed
    still meets.  Episode k (1..N) runs on simulator seed ``eval_seed + k``.
    """

    route_length_m: float = 200.0
    episodes: int = 20
    eval_seed: int = DEFAULT_EVAL_SEED
    traffic: bool = True  # False: no other vehicles (proves routes, starts and time limit, not the learner)
    min_speed_fraction: float = 0.5

    def time_limit_steps(self, target_speed: float, dt: float) -> int:
        return math.ceil(self.route_length_m / (self.min_speed_fraction * target_speed) / dt)

    def parameters(self) -> dict[str, dict[str, Any]]:
        """Node parameters that set the protocol up (applied before any --set override)."""
        simulator: dict[str, Any] = {"random_start": True, "route_length_m": float(self.route_length_m),
                                     "seed": int(self.eval_seed)}
        if not self.traffic:
            simulator["other_vehicles"] = 0
        reward = RewardConfig()
        return {"simulator": simulator,
                "evaluator": {"reward.max_episode_steps": self.time_limit_steps(reward.target_speed, reward.dt)}}


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
    eval_max_ticks: int = 100_000
    eval_config: str = "drive"
    eval_set: list[str] = field(default_factory=list)
    curve_points: int = 50

    def protocol(self) -> Protocol:
        return Protocol(self.eval_route_length_m, self.eval_episodes, self.eval_seed)


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
        "steps": train.get("steps"), "seeds": train.get("seeds"), "train_config": train.get("config"),
        "train_set": train.get("set"), "eval_episodes": ev.get("episodes"), "eval_seed": ev.get("seed"),
        "eval_max_ticks": ev.get("max_ticks"), "eval_config": ev.get("config"), "eval_set": ev.get("set"),
        "eval_route_length_m": ev.get("route_length_m"),
    }
    cast = {"steps": int, "curve_points": int, "eval_episodes": int, "eval_seed": int, "eval_max_ticks": int,
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

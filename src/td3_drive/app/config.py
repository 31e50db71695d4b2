"""The one place that composes node parameters, in this order (later wins):

1. each node's config dataclass defaults (declared by the node itself),
2. the ROS 2 parameter file (``config/train.yaml``, ``drive.yaml``: only what differs from 1),
3. ``config/embedded.yaml`` (the built-in simulator instead of CARLA),
4. what the command sets (run dir, resume, an evaluation protocol, ``--deterministic``),
5. ``--seed`` (trainer and policy: the seed; simulator: seed x 1000),
6. ``--set node.param=value``;

then the actor architecture from its one source (:func:`set_architecture`): the trainer's
``learner.*`` for training, the checkpoint for driving.

Node keys as :mod:`td3_drive.runtime.parameters` spells them: ``policy`` means any
namespace (``/**/policy`` in a file), ``/policy`` the root namespace only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from td3_drive.runtime.parameters import ParameterFileError, for_node, internal_key, yaml_key

Parameters = dict[str, dict[str, Any]]

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"

#: --deterministic: what exact resume needs (applied before --set, so a test can still shrink a run)
DETERMINISTIC: Parameters = {
    "trainer": {"device": "cpu", "checkpoint_replay": True, "checkpoint_episodes": 1, "checkpoint_every": 0,
                "async_updates": False, "replay_on_disk": False},
    "policy": {"device": "cpu", "backend": "torch"},
}

#: the actor architecture as the other nodes declare it: policy (the actor it runs) and camera_preprocessor
#: (frames per observation).  One source: the trainer's learner (training) or the checkpoint (driving)
ARCHITECTURE_PARAMETERS = {"layer_norm": ("policy",), "frame_stack": ("policy", "camera_preprocessor"),
                           "trunk_dim": ("policy",)}

#: nodes that run once per vehicle (the trainer and evaluator run once)
VEHICLE_NODES = ("simulator", "camera_preprocessor", "policy", "classical_controller")


#: parameters one file may set: YAML aliases can nest a mapping into itself level after level, and
#: flattening such a file of a few hundred bytes would make billions of names
MAX_PARAMETERS = 100_000


def flatten(params: dict[str, Any], prefix: str = "", limit: int = MAX_PARAMETERS) -> dict[str, Any]:
    """Nested YAML dicts -> dotted ROS 2 parameter names ({'learner': {'tau': x}} -> {'learner.tau': x}).
    Raises ParameterFileError beyond ``limit`` names."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}.", limit - len(out)))
        else:
            out[name] = value
        if len(out) > limit:
            raise ParameterFileError(f"more than {MAX_PARAMETERS} parameters (YAML aliases nested in each other?)")
    return out


def find_config(name_or_path: str) -> Path:
    """A path, or a name in the package's config/ directory ('train' -> config/train.yaml)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.exists():
            return candidate
    try:  # installed package (colcon / ament): share/td3_drive/config
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("td3_drive")) / "config" / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    raise FileNotFoundError(f"config {name_or_path!r} not found (looked in {CONFIG_DIR})")


def load_parameters(config: str | Path, overrides: Parameters | None = None) -> Parameters:
    """A ROS 2 parameter file -> {node key: {dotted_param: value}} with ``overrides`` applied.

    Raises ParameterFileError for a file that is not YAML of the form ``node: {ros__parameters: {...}}``."""
    path = Path(find_config(str(config)))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: yaml recurses
        raise ParameterFileError(f"{path}: not a YAML parameter file: {type(exc).__name__}: {exc}") from None
    params: Parameters = {}
    shape = "node: {ros__parameters: {name: value}}"
    if not isinstance(raw, dict):
        raise ParameterFileError(f"{path}: a parameter file maps node names as {shape}, not a {type(raw).__name__}")
    for node, body in raw.items():
        values = body.get("ros__parameters") if isinstance(body, dict) else None
        if not isinstance(body or {}, dict) or not isinstance(values or {}, dict):
            raise ParameterFileError(f"{path}: {node!r} is not {shape}")
        params.setdefault(internal_key(node), {}).update(flatten(values or {}))
    merge(params, overrides or {})
    return params


def merge(params: Parameters, extra: Parameters) -> Parameters:
    """``extra``'s values over ``params``' (in place; nested dicts are flattened to dotted names)."""
    for node, values in extra.items():
        params.setdefault(node, {}).update(flatten(values))
    return params


def compose(config: str | Path, seed: int | None = None, overrides: list[str] | tuple[str, ...] = (),
            extra: Parameters | None = None, *, actor: Path | None = None, training: bool = False) -> Parameters:
    """Every node's parameters for an embedded run (steps 2-6 of the module docstring), then the actor
    architecture: from ``actor`` (the checkpoint the policy loads, one of the command's values) when
    given, else, for ``training``, from the trainer's learner."""
    if actor is not None:
        extra = merge({"policy": {"checkpoint": str(actor)}}, extra or {})
    params = merge(load_parameters(config), load_parameters("embedded"))
    merge(params, extra or {})
    if seed is not None:
        for node in ("trainer", "policy"):
            params.setdefault(node, {})["seed"] = seed
        params.setdefault("simulator", {})["seed"] = seed * 1000
    for item in overrides:  # --set trainer.learner.tau=0.01
        key, equals, value = item.partition("=")
        node, dot, name = key.partition(".")
        if not name or not dot or not equals:
            raise SystemExit(f"--set expects node.param=value, got {item!r}")
        params.setdefault(node, {})[name] = yaml.safe_load(value)
    if actor is not None:
        set_architecture(params, checkpoint_architecture(actor), f"the checkpoint {actor}")
    elif training:
        set_architecture(params, learner_architecture(params), "trainer.learner")
    return params


def learner_architecture(parameters: Parameters, defaults: bool = True) -> dict[str, Any]:
    """The actor architecture the trainer's ``learner.*`` parameters give; where unset, ``LearnerConfig``'s
    defaults (``defaults=False``: only what the parameters set, without importing torch)."""
    trainer = for_node(parameters, "trainer")
    given = {key: trainer[f"learner.{key}"] for key in ARCHITECTURE_PARAMETERS if f"learner.{key}" in trainer}
    if not defaults:
        return given
    from td3_drive.rl.learner import LearnerConfig  # torch: only where a graph is built anyway

    default = LearnerConfig()
    return {key: given.get(key, getattr(default, key)) for key in ARCHITECTURE_PARAMETERS}


def checkpoint_architecture(actor_file: str | Path) -> dict[str, Any]:
    """The actor architecture stored with a checkpoint's actor.safetensors ({} if it names none)."""
    from td3_drive.rl.weights import read_architecture

    arch = read_architecture(actor_file)
    return {} if arch is None else {key: getattr(arch, key) for key in ARCHITECTURE_PARAMETERS}


def set_architecture(parameters: Parameters, architecture: dict[str, Any], source: str) -> Parameters:
    """Give the policy and the preprocessor ``architecture`` (in place).  A value set for them by hand
    that disagrees is refused: ``source`` (the learner, the checkpoint) decides."""
    for key, value in architecture.items():
        for node in ARCHITECTURE_PARAMETERS[key]:
            given = for_node(parameters, node).get(key, value)
            if given != value:
                raise SystemExit(f"{node}.{key}={given!r} disagrees with {source} ({value!r}): the architecture "
                                 f"has one source, set it there")
            parameters.setdefault(node, {})[key] = value
    return parameters


def vehicle_parameters(parameters: Parameters, vehicles: int) -> Parameters:
    """Scale-out on one runtime: per vehicle ``i`` the simulator, camera_preprocessor and policy
    run as ``/v<i>/<node>`` (role ``hero<i>``, namespace ``v<i>``, simulator seeds 100000 apart);
    they read the file's ``/**/<node>`` entries as under ROS, plus these per-vehicle ones. The
    trainer learns from all of them (as ``train.launch.py num_vehicles:=N`` wires it)."""
    if vehicles == 1:
        return parameters
    out = {name: dict(values) for name, values in parameters.items()}
    for i in range(vehicles):
        for name in VEHICLE_NODES:
            values: dict[str, Any] = {"role_name": f"hero{i}", "namespace": f"v{i}"}
            if name == "simulator":
                values["seed"] = int(for_node(parameters, f"v{i}/{name}").get("seed", 0)) + 100_000 * i
            out[f"/v{i}/{name}"] = values
    out.setdefault("trainer", {}).update(vehicle_namespaces=[f"v{i}" for i in range(vehicles)],
                                         vehicle_role_names=[f"hero{i}" for i in range(vehicles)])
    return out


def snapshot(run_dir: Path, parameters: Parameters, argv: list[str] | None = None) -> None:
    """``run_dir/config.yaml`` (a ROS 2 parameter file of exactly what ran) and ``command.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    nested = {yaml_key(node): {"ros__parameters": values} for node, values in parameters.items()}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(nested, sort_keys=True))
    if argv is not None:
        (run_dir / "command.json").write_text(json.dumps({"argv": argv, "time": time.time()}))


def make_deterministic() -> None:
    """CPU, one thread, deterministic kernels: the same inputs give bit-identical weights."""
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; intra-op threads are what matter
        pass

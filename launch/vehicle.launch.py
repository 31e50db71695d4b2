"""One vehicle's pipeline: its world side, camera_preprocessor and policy (and the evaluator / episode manager).

bringup.launch.py includes this file once per vehicle (nav2_bringup's shape); on its own:

    ros2 launch td3_drive vehicle.launch.py simulator:=embedded mode:=drive checkpoint:=runs/td3 \\
        params_file:=$(ros2 pkg prefix td3_drive)/share/td3_drive/config/drive.yaml

simulator:=carla   carla_spawn_objects + carla_waypoint_publisher (start_bridge), carla_episode_manager
                   (training, or episodes:=true)
simulator:=embedded the `simulator` node: the racetrack publishing the bridge's topics and /clock; it
                   resets itself on /td3/reset_request, so no episode manager
Everything runs under ``namespace`` (nodes and /td3 topics); launch arguments override the parameter file.
"""
from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ("params_file", "", "parameter file of every node (bringup passes config/train.yaml or config/drive.yaml)"),
    ("mode", "train", "train (exploring policy, learner back-pressure) | drive (trained actor, no noise)"),
    ("simulator", "carla", "carla (the bridge's world) | embedded (the built-in racetrack, no CARLA, no GPU)"),
    ("namespace", "", "namespace of this vehicle's nodes and /td3 topics"),
    ("role_name", "ego_vehicle", "ego vehicle role name (its /carla/<role_name>/... topics)"),
    ("checkpoint", "", "actor the policy loads at start"),
    ("device", "auto", "torch device of the policy: auto | cpu | cuda[:N]"),
    ("wait_for_control", "true", "lockstep: the world ticks only after our control (the policy's watchdog stays "
                                 "silent)"),
    ("episodes", "false", "drive: the evaluator ends episodes and requests resets (always with embedded)"),
    ("start_bridge", "true", "carla: start carla_spawn_objects and carla_waypoint_publisher for this vehicle"),
    ("carla_host", "localhost", "CARLA server host"),
    ("carla_port", "2000", "CARLA server RPC port"),
    ("carla_timeout", "20", "seconds the waypoint publisher and the episode manager wait for CARLA"),
    ("objects_definition_file", "", "carla_spawn_objects JSON with this vehicle's role name as its id"),
    ("seed", "0", "seed of the embedded world / the episode manager's spawn order"),
    ("spawn_order", "cycle", "carla_episode_manager: cycle | random (scale-out: random, seed = vehicle index)"),
]


def _is(name: str, value: str) -> list:
    """Python-expression pieces: the launch argument ``name`` equals ``value``."""
    return ["('", LaunchConfiguration(name), f"' == '{value}')"]


def _true(name: str) -> list:
    """Python-expression pieces: the launch argument ``name`` is a true boolean (true, 1, yes, on)."""
    return ["('", LaunchConfiguration(name), "'.lower() in ('true', '1', 'yes', 'on'))"]


def _when(*pieces: object) -> IfCondition:
    """IfCondition over a Python expression joined from strings and the pieces of _is / _true."""
    flat: list = []
    for piece in pieces:
        flat += piece if isinstance(piece, list) else [piece]
    return IfCondition(PythonExpression(flat))


def _text(name: str) -> ParameterValue:
    # without value_type launch_ros YAML-parses substituted values: a role name "1" would arrive as an int
    return ParameterValue(LaunchConfiguration(name), value_type=str)


def generate_launch_description() -> LaunchDescription:
    config = LaunchConfiguration("params_file")
    ids = {"role_name": _text("role_name"), "namespace": _text("namespace"), "use_sim_time": True}
    train = PythonExpression(_is("mode", "train"))  # "True" / "False": launch_ros reads it as a bool
    carla_side = _when(_is("simulator", "carla"), " and ", _true("start_bridge"))

    pipeline = GroupAction(scoped=True, actions=[
        PushRosNamespace(LaunchConfiguration("namespace")),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("carla_spawn_objects"), "carla_spawn_objects.launch.py"])),
            launch_arguments={"objects_definition_file": LaunchConfiguration("objects_definition_file")}.items(),
            condition=carla_side,
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("carla_waypoint_publisher"),
                                      "carla_waypoint_publisher.launch.py"])),
            launch_arguments={"host": LaunchConfiguration("carla_host"), "port": LaunchConfiguration("carla_port"),
                              "timeout": LaunchConfiguration("carla_timeout"),
                              "role_name": LaunchConfiguration("role_name")}.items(),
            condition=carla_side,
        ),
        Node(
            package="td3_drive", executable="simulator", name="simulator", output="screen", emulate_tty=True,
            condition=_when(_is("simulator", "embedded")),
            # the world `td3-drive train` trains in (traffic, random starts, hazards), then the params file;
            # like the bridge's wait-for-control: a tick per control, or after 1 s without one
            parameters=[PathJoinSubstitution([FindPackageShare("td3_drive"), "config", "embedded.yaml"]), config,
                        {**ids, "pace": "deadline", "control_deadline": 1.0,
                                 "seed": LaunchConfiguration("seed")}],
        ),
        Node(
            package="td3_drive", executable="camera_preprocessor", name="camera_preprocessor", output="screen",
            emulate_tty=True, parameters=[config, ids],
        ),
        Node(
            package="td3_drive", executable="policy", name="policy", output="screen", emulate_tty=True,
            parameters=[config, {
                **ids, "checkpoint": _text("checkpoint"), "device": _text("device"),
                "lockstep": LaunchConfiguration("wait_for_control"),
                "explore": train,  # drive: the trained actor, no noise
                "wait_for_learner": train,  # train: hold each control until the trainer has caught up
            }],
        ),
        Node(
            package="td3_drive", executable="evaluator", name="evaluator", output="screen", emulate_tty=True,
            # drive: it ends episodes and asks for the reset (episodes:=true; always in the embedded
            # world, which nothing else resets)
            condition=_when(_is("mode", "drive"), " and (", _true("episodes"), " or ", _is("simulator", "embedded"),
                            ")"),
            parameters=[config, ids],
        ),
        Node(
            package="td3_drive", executable="carla_episode_manager", name="carla_episode_manager", output="screen",
            emulate_tty=True,
            condition=_when(_is("simulator", "carla"), " and (", _is("mode", "train"), " or ", _true("episodes"), ")"),
            parameters=[config, {
                **ids, "carla_host": _text("carla_host"), "carla_port": LaunchConfiguration("carla_port"),
                "carla_timeout_s": LaunchConfiguration("carla_timeout"),
                "objects_definition_file": _text("objects_definition_file"),
                "seed": LaunchConfiguration("seed"), "spawn_order": _text("spawn_order"),
            }],
        ),
    ])
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [pipeline])

"""Train TD3: a world, the vehicle pipelines and one trainer (bringup.launch.py with mode:=train).

    ros2 launch td3_drive train.launch.py simulator:=embedded   # no CARLA, no GPU: the built-in racetrack
    ros2 launch td3_drive train.launch.py                       # CARLA: bridge, spawn, waypoints, our nodes
    ros2 launch td3_drive train.launch.py start_bridge:=false   # a bridge already runs elsewhere
    ros2 launch td3_drive train.launch.py num_vehicles:=4       # scale-out: hero0..hero3 in /v0../v3

Per vehicle (vehicle.launch.py): the world side (CARLA: carla_spawn_objects, carla_waypoint_publisher,
carla_episode_manager; embedded: the simulator node), camera_preprocessor and policy (exploring, each
control held until the trainer has caught up).  One trainer broadcasts actor weights to every policy
(/td3/actor_weights is never namespaced).  Launch arguments override config/train.yaml.
"""
from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

#: name, default (as in bringup.launch.py), description
ARGUMENTS = [
    ("simulator", "carla", "carla: CARLA through carla_ros_bridge | embedded: the built-in racetrack (no CARLA, "
                           "no GPU)"),
    ("carla_host", "localhost", "CARLA server host"),
    ("carla_port", "2000", "CARLA server RPC port"),
    ("carla_timeout", "20", "seconds the bridge and the episode manager wait for CARLA (it reloads the town)"),
    ("town", "Town01", "CARLA town the bridge loads"),
    ("role_name", "ego_vehicle", "ego vehicle role name (single vehicle)"),
    ("namespace", "", "namespace for /td3 topics and our nodes (single vehicle)"),
    ("num_vehicles", "1", "vehicle pipelines; >1 uses roles hero0..heroN-1 in namespaces v0..vN-1 (carla only)"),
    ("checkpoint", "", "actor the policy loads at start, until the trainer's first weights"),
    ("resume", "false", "the trainer continues from the newest checkpoint in run_dir"),
    ("device", "auto", "torch device of policy and trainer: auto | cpu | cuda[:N]"),
    ("run_dir", "runs/latest", "output directory for checkpoints and logs"),
    ("start_bridge", "true", "carla: start carla_ros_bridge, carla_spawn_objects and carla_waypoint_publisher"),
    ("start_trainer", "true", "false: only the vehicle pipelines; the trainer runs elsewhere"),
    ("fixed_delta_seconds", "0.05", "simulation step (20 Hz; must be < 0.1)"),
    ("wait_for_control", "true", "lockstep: the world ticks only after a control command (1 s timeout)"),
    ("objects_definition_file", "", "carla_spawn_objects JSON (empty: config/objects.json)"),
    ("config", "", "parameter file (empty: config/train.yaml)"),
]


def generate_launch_description() -> LaunchDescription:
    bringup = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("td3_drive"), "launch",
                                                            "bringup.launch.py"])),
        launch_arguments={"mode": "train", **{name: LaunchConfiguration(name) for name, _, _ in ARGUMENTS}}.items(),
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [bringup])

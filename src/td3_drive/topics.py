"""Every topic name and message type in one place: the CARLA bridge's and ours.

Bridge topics follow carla-ros-bridge (ROS 2) for a vehicle with ``role_name``
(default ``ego_vehicle``).  Ours live under ``/td3``; both get the optional
namespace prefix used for multi-vehicle scale-out.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGE = "sensor_msgs/msg/Image"
ODOMETRY = "nav_msgs/msg/Odometry"
FLOAT32 = "std_msgs/msg/Float32"
BOOL = "std_msgs/msg/Bool"
FLOAT32_ARRAY = "std_msgs/msg/Float32MultiArray"
UINT8_ARRAY = "std_msgs/msg/UInt8MultiArray"
HEADER = "std_msgs/msg/Header"
JOINT_STATE = "sensor_msgs/msg/JointState"
PATH = "nav_msgs/msg/Path"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
CONTROL = "carla_msgs/msg/CarlaEgoVehicleControl"
VEHICLE_STATUS = "carla_msgs/msg/CarlaEgoVehicleStatus"
COLLISION = "carla_msgs/msg/CarlaCollisionEvent"
LANE_INVASION = "carla_msgs/msg/CarlaLaneInvasionEvent"
CARLA_STATUS = "carla_msgs/msg/CarlaStatus"
WORLD_INFO = "carla_msgs/msg/CarlaWorldInfo"
CLOCK = "rosgraph_msgs/msg/Clock"
DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"

#: the observation's shape on /td3/observation/{image,state}: frames of FRAME_SIZE x FRAME_SIZE
#: mono8 pixels side by side, and a kinematic state of STATE_DIM values
FRAME_SIZE = 84
STATE_DIM = 53

#: names of the /td3/ground_truth/lead JointState's positions
LEAD_NAMES = ("lead_gap", "lead_speed")

FEATURE_STATS = ("l2_norm", "l2_norm_max", "mean", "std", "min", "max", "dead_fraction")


def _join(namespace: str, name: str) -> str:
    namespace = namespace.strip("/")
    return f"/{namespace}{name}" if namespace else name


@dataclass(frozen=True)
class Topics:
    """Topic names for one vehicle pipeline."""

    role_name: str = "ego_vehicle"
    namespace: str = ""

    def _carla(self, leaf: str) -> str:
        return f"/carla/{self.role_name}/{leaf}"

    def _td3(self, leaf: str) -> str:
        return _join(self.namespace, f"/td3/{leaf}")

    # --- published by the CARLA bridge (or the embedded simulator) ---
    @property
    def camera(self) -> str:
        return self._carla("rgb_front/image")

    @property
    def odometry(self) -> str:
        return self._carla("odometry")

    @property
    def speedometer(self) -> str:
        return self._carla("speedometer")

    @property
    def vehicle_status(self) -> str:
        return self._carla("vehicle_status")

    @property
    def collision(self) -> str:
        return self._carla("collision")

    @property
    def lane_invasion(self) -> str:
        return self._carla("lane_invasion")

    @property
    def route(self) -> str:
        return self._carla("waypoints")

    @property
    def goal(self) -> str:
        """carla_waypoint_publisher re-plans the route to a goal published here."""
        return self._carla("goal")

    carla_status: str = "/carla/status"
    #: the bridge publishes it (latched) once the town is loaded: per-vehicle launch waits for it
    world_info: str = "/carla/world_info"
    clock: str = "/clock"

    @property
    def lead_ground_truth(self) -> str:
        """JointState (lead_gap [m], lead_speed [m/s]) of the car ahead in the ego's path, from the embedded
        simulator only: privileged data for the reference driver and the evaluator, never for the policy."""
        return self._td3("ground_truth/lead")

    # --- published by us ---
    @property
    def td3_prefix(self) -> str:
        """'/td3/' or '/<namespace>/td3/': every topic of ours for this vehicle starts with it."""
        return self._td3("")

    @property
    def control(self) -> str:
        return self._carla("vehicle_control_cmd")

    @property
    def observation_image(self) -> str:
        """mono8, the frame stack side by side (84 x 4*84): view it in rqt_image_view."""
        return self._td3("observation/image")

    @property
    def observation_state(self) -> str:
        """JointState whose names label the kinematic vector (plottable in rqt_plot)."""
        return self._td3("observation/state")

    @property
    def episode_start(self) -> str:
        """Header: stamp = first tick of the new episode, frame_id = episode number."""
        return self._td3("episode_start")

    @property
    def reset_request(self) -> str:
        """Header: frame_id = why the episode ended (collision, off_route, timeout, ...)."""
        return self._td3("reset_request")

    #: one trainer broadcasts to every vehicle pipeline, so weights are never namespaced
    actor_weights: str = "/td3/actor_weights"

    @property
    def exploration(self) -> str:
        """Bool: the trainer switches exploration noise off for evaluation episodes."""
        return self._td3("exploration")

    @property
    def learner_ready(self) -> str:
        """Header: the trainer has taken the observation stamped ``stamp`` and its learner is caught up
        (back-pressure: the policy holds that tick's control until then, ``wait_for_learner``)."""
        return self._td3("learner_ready")

    @property
    def reward(self) -> str:
        return self._td3("reward")

    def features(self, encoder: str, stat: str) -> str:
        """/td3/features/<actor|critic>/<stat>; stat 'vector' is the raw feature vector."""
        return self._td3(f"features/{encoder}/{stat}")

    diagnostics: str = "/diagnostics"

"""The embedded simulator: highway-env's racetrack behind the CARLA ROS bridge's topics.

``racetrack`` is the ROS-free environment wrapper; ``node`` publishes it with the
bridge's topic names and types, ticking once per control command (lockstep);
``gym_env`` is the same task behind the Gymnasium API, registered here as
``td3_drive/Racetrack-v0``.
"""
import gymnasium as _gym

from td3_drive.sim.gym_env import ENV_ID, RacetrackDriveEnv
from td3_drive.sim.racetrack import RacetrackSim, SimConfig, SimFrame, sanitize_control

if ENV_ID not in _gym.registry:
    _gym.register(id=ENV_ID, entry_point=RacetrackDriveEnv)

__all__ = ["ENV_ID", "RacetrackDriveEnv", "RacetrackSim", "SimConfig", "SimFrame", "sanitize_control"]

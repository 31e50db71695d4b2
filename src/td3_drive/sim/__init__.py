"""The embedded simulator: highway-env's racetrack behind the CARLA ROS bridge's topics.

``racetrack`` is the ROS-free environment wrapper; ``node`` publishes it with the
bridge's topic names and types, ticking once per control command (lockstep).
"""
from td3_drive.sim.racetrack import RacetrackSim, SimConfig, SimFrame, sanitize_control

__all__ = ["RacetrackSim", "SimConfig", "SimFrame", "sanitize_control"]

"""The CARLA-client side: spawning, teleporting and watching the ego vehicle between episodes."""

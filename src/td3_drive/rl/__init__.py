"""The learning core: networks, the TD3 update, replay, checkpoints, actor weights, the training
session.  torch and numpy only: nothing here knows about ROS, messages or driving."""

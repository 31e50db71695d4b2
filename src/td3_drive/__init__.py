"""td3_drive: TD3 with a LayerNorm CNN that learns to drive from a front camera.

Data flow: camera image -> ``driving.observation`` -> ``rl.models.Actor`` -> ``driving.control``;
transitions (``driving.transitions``, ``driving.episode``) -> ``rl.replay`` -> ``rl.learner``
-> ``rl.weights`` -> policy node.  Layers, each importing only those below it:
``app`` -> ``nodes``, ``sim`` -> ``rl``, ``driving``, ``runtime``, ``carla`` -> ``topics``.
"""

__version__ = "0.1.0"

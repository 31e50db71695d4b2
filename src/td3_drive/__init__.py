"""td3_drive: TD3 with a LayerNorm CNN that learns to drive from a front camera.

Data flow: camera image -> ``observation`` -> ``models.Actor`` -> ``control``;
transitions -> ``replay`` -> ``learner`` -> ``weights`` -> policy node.
"""

__version__ = "0.1.0"

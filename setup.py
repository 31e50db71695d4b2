"""td3_drive: one setup.py for colcon (ament_python) and for plain pip.

``colcon build`` installs package.xml, the ament index marker, launch and config
files under share/td3_drive and the node executables under lib/td3_drive.
``pip install -e '.[sim,dev]'`` gives the same Python package outside ROS 2.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "td3_drive"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="TD3 with a LayerNorm CNN that learns to drive from a front camera, as ROS 2 nodes",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages(where="src"),
    package_data={PACKAGE: ["msg/*/*.msg"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.json")),
        (f"share/{PACKAGE}/config/presets", glob("config/presets/*.yaml")),
        (f"share/{PACKAGE}/config/dds", glob("config/dds/*.xml")),
        (f"share/{PACKAGE}/config/rqt", glob("config/rqt/*.perspective")),
    ],
    install_requires=[
        "numpy>=1.24",
        "torch==2.13.0",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "opencv-python-headless>=4.8",
        "rosbags>=0.11.7",
        "rosbags-image>=0.10",  # sensor_msgs/Image conversion where cv_bridge (ROS 2) is absent
    ],
    extras_require={
        "sim": ["highway-env>=1.12", "gymnasium>=1.0"],
        "eval": ["matplotlib>=3.7", "scipy>=1.10"],
        "fast": ["onnx>=1.16", "onnxruntime>=1.18"],
        # the pip-only DDS runtime; pinned: runtime/dds_types.py swaps one of its (de)serializers
        "dds": ["cyclonedds==11.0.1"],
        "dev": [
            "pytest>=8",
            "hypothesis>=6",
            "matplotlib>=3.7",
            "scipy>=1.10",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "colcon-core>=0.15",
            "colcon-ros>=0.4",
            "colcon-python-setup-py>=0.2.8",
            "cyclonedds==11.0.1",
            "atheris>=3.0",  # make fuzz, and test_fuzz's run of one target through libFuzzer
        ],
    },
    entry_points={
        "console_scripts": [
            "td3-drive = td3_drive.app.cli:main",
            "camera_preprocessor = td3_drive.nodes.preprocessor:main",
            "policy = td3_drive.nodes.policy:main",
            "trainer = td3_drive.nodes.trainer:main",
            "evaluator = td3_drive.nodes.evaluator:main",
            "classical_controller = td3_drive.nodes.classical_controller:main",
            "carla_episode_manager = td3_drive.nodes.carla_episode_manager:main",
            "simulator = td3_drive.sim.node:main",
            "carla_world_ready = td3_drive.nodes.world_ready:main",
        ],
    },
    zip_safe=False,
)

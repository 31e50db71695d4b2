"""Configuration is composed in one place: parameter files hold only what differs from the code,
the actor architecture has one source, and `td3-drive params` lists what the nodes declare."""
from __future__ import annotations

import json

import pytest

from td3_drive.app import cli, config
from td3_drive.app.embedded import NODE_KINDS, declared_parameters

DECLARED = {kind: declared_parameters(kind) for kind in NODE_KINDS}


@pytest.mark.parametrize("name", ["train", "drive", "embedded"])
def test_parameter_files_hold_only_what_differs_from_the_code(name):
    for key, values in config.load_parameters(name).items():
        kind = key.rsplit("/", 1)[-1]
        declared = DECLARED[kind]
        for param, value in values.items():
            assert param in declared, f"config/{name}.yaml: {kind} declares no parameter {param!r}"
            assert value != declared[param][0], (f"config/{name}.yaml: {kind}.{param} = {value!r} repeats the "
                                                 "code default (a changed default would silently lose to it)")


def test_every_declared_parameter_is_described():
    for kind, declared in DECLARED.items():
        for param, (_, description) in declared.items():
            assert description, f"{kind}.{param} has no description"


def test_training_takes_the_architecture_from_the_learner():
    params = config.compose("train", overrides=["trainer.learner.layer_norm=false", "trainer.learner.frame_stack=3"],
                            training=True)
    policy, preprocessor = config.for_node(params, "policy"), config.for_node(params, "camera_preprocessor")
    assert (policy["layer_norm"], policy["frame_stack"], preprocessor["frame_stack"]) == (False, 3, 3)
    assert policy["trunk_dim"] == DECLARED["trainer"]["learner.trunk_dim"][0]


def test_a_second_source_for_the_architecture_is_refused():
    with pytest.raises(SystemExit, match="policy.layer_norm=True disagrees with trainer.learner"):
        config.compose("train", overrides=["trainer.learner.layer_norm=false", "policy.layer_norm=true"], training=True)


def test_later_steps_of_the_composition_win():
    params = config.compose("train", seed=7, overrides=["trainer.seed=3"],
                            extra={"trainer": {"batch_size": 5, "seed": 1}, "simulator": {"other_vehicles": 9}})
    trainer, simulator = config.for_node(params, "trainer"), config.for_node(params, "simulator")
    assert trainer["seed"] == 3 and trainer["batch_size"] == 5  # --set over --seed over the command's values
    assert simulator["seed"] == 7000 and simulator["other_vehicles"] == 9  # the command's over embedded.yaml
    assert trainer["total_steps"] == 10000  # train.yaml over the code default
    with pytest.raises(SystemExit, match="node.param=value"):
        config.compose("train", overrides=["trainer.batch_size"])


def test_params_command_lists_declarations(capsys):
    assert cli.main(["params", "policy", "trainer"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(listed["nodes"]) == {"policy", "trainer"}
    tau = listed["nodes"]["trainer"]["learner.tau"]
    assert tau["default"] == 0.005 and tau["description"]
    assert listed["nodes"]["policy"]["exploration_noise"]["default"] == 0.1


def test_train_options_say_the_command_that_reproduces_them():
    from pathlib import Path

    from td3_drive.app import cli
    from td3_drive.app.train import TrainOptions

    options = TrainOptions(run_dir=Path("runs/x"), steps=60, seed=2, overrides=["trainer.batch_size=8"], bag=False,
                           deterministic=True)
    assert cli.train_options(cli.build_parser().parse_args(options.argv())) == options


def test_the_nodes_default_to_the_learners_architecture():
    """Under ros2 launch the policy adopts the architecture of the weights it gets and the preprocessor
    reads only the parameter file: on default parameters they match the learner's only while their own
    defaults are the learner's."""
    learner = DECLARED["trainer"]
    for key, nodes in config.ARCHITECTURE_PARAMETERS.items():
        for node in nodes:
            assert DECLARED[node][key][0] == learner[f"learner.{key}"][0], f"{node}.{key}"

"""The policy's batch-1 runner: the ONNX Runtime path computes what the PyTorch actor computes,
after every weight hot-swap, whatever values the weights take."""
import json

import numpy as np
import pytest
import torch

from td3_drive.rl.inference import ONNX_PREFIX, ActorRunner, export_onnx_graph
from td3_drive.rl.learner import LearnerConfig
from td3_drive.rl.models import ActorArchitecture, build_actor

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ARCHITECTURES = {
    "default": LearnerConfig().actor_architecture(),
    "no layer norm, no trunk": ActorArchitecture(frame_stack=4, state_dim=53, action_dim=2, layer_norm=False,
                                                 hidden=(64,), feature_dim=512, trunk_dim=0),
}


def _inputs(architecture: ActorArchitecture, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, (architecture.frame_stack, 84, 84), dtype=np.uint8)
    return obs, rng.standard_normal(architecture.state_dim).astype(np.float32)


def _weights(architecture: ActorArchitecture, seed: int) -> dict[str, torch.Tensor]:
    """Seed 0: as built (zero biases, unit LayerNorm scales: many weights equal in value).
    Other seeds: every weight distinct, as after training."""
    torch.manual_seed(seed)
    weights = build_actor(architecture).state_dict()
    if seed:
        weights = {k: v + 0.05 * torch.randn_like(v) for k, v in weights.items()}
    return weights


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_onnx_runner_computes_what_the_actor_computes_after_every_weight_load(name):
    architecture = ARCHITECTURES[name]
    onnx_runner = ActorRunner(architecture, device="cpu", backend="onnxruntime")
    torch_runner = ActorRunner(architecture, device="cpu", backend="torch")
    # equal-valued weights first, then distinct ones: an export whose weights were merged by
    # value, or a session that kept the exported values, fails the second and third loads
    for seed in (0, 1, 2):
        weights = _weights(architecture, seed)
        onnx_runner.load_state_dict(weights)
        torch_runner.load_state_dict(weights)
        obs, state = _inputs(architecture, seed)
        action, features = onnx_runner(obs, state)
        expected_action, expected_features = torch_runner(obs, state)
        assert action.shape == (architecture.action_dim,) and features.shape == (architecture.feature_dim,)
        np.testing.assert_allclose(features, expected_features, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(action, expected_action, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_exported_graph_has_one_initializer_per_weight_and_leaves_the_global_rng_alone(name):
    architecture = ARCHITECTURES[name]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    model = export_onnx_graph(architecture)
    assert torch.equal(torch.get_rng_state(), before)  # a policy built mid-training changes no draw
    names = [initializer.name for initializer in model.graph.initializer]
    assert sorted(names) == sorted(ONNX_PREFIX + key for key in build_actor(architecture).state_dict())


def test_bench_policy_reports_inference_and_weight_swap_times(capsys):
    from td3_drive.app import bench

    assert bench.main(["policy", "--iterations", "20", "--swaps", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["backend"] == "onnxruntime" and result["p50_ms"] > 0
    assert 0 < result["weights_swap_p50_ms"] <= result["weights_swap_max_ms"]

"""Batch-1 actor inference for the policy node: action + the 512-d features.

At batch 1 the cost is framework overhead, not FLOPs.  On CPU the actor is
exported to ONNX and run by ONNX Runtime (measured p99 ~0.5 ms vs ~1.1 ms eager
PyTorch on the 2-core dev machine); on CUDA, or without onnxruntime, PyTorch runs
it directly.  The graph is exported once; a weight hot-swap writes the new weights
into it and builds a session (~20 ms with the decode, where re-exporting took ~60 ms:
the policy answers no control meanwhile, once per swap).
"""
from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from td3_drive import topics as T
from td3_drive.rl.models import Actor, ActorArchitecture, build_actor

log = logging.getLogger(__name__)
BACKENDS = ("auto", "onnxruntime", "torch")
#: the exported module wraps the actor as ``actor``: its initializers are named ``actor.<state-dict key>``
ONNX_PREFIX = "actor."


class _ActionAndFeatures(nn.Module):
    def __init__(self, actor: Actor) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.actor.encoder(obs)
        return self.actor.head(features, state), features


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ActorRunner:
    """Runs the actor on one observation; ``load_state_dict`` swaps weights."""

    def __init__(self, architecture: ActorArchitecture, device: str = "auto", backend: str = "auto",
                 threads: int = 1) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        self.architecture = architecture
        self.device = resolve_device(device)
        self.threads = threads
        self.actor = build_actor(architecture).to(self.device).eval()
        if backend == "auto":
            backend = "onnxruntime" if self.device.type == "cpu" and _has_onnxruntime() else "torch"
        self.backend = backend
        self._onnx_model = export_onnx_graph(architecture) if backend == "onnxruntime" else None
        self._session = None
        self._rebuild()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.actor.load_state_dict(state_dict, strict=True)
        if self._onnx_model is not None:  # PyTorch runs the loaded tensors as they are
            self._rebuild()

    def _rebuild(self) -> None:
        if self._onnx_model is not None:
            self._session = self._onnx_session()
        # a first run allocates and plans (ms, more on a GPU): do it now, not on the first control
        self(np.zeros((self.architecture.frame_stack, T.FRAME_SIZE, T.FRAME_SIZE), np.uint8),
             np.zeros(self.architecture.state_dim, np.float32))

    def _onnx_session(self) -> Any:
        """A session on the exported graph with the actor's current weights as its initializers."""
        import onnxruntime as ort
        from onnx import numpy_helper

        # written into the graph, not passed as SessionOptions.add_initializer: with its default graph
        # optimizations ONNX Runtime 1.32 then returned features off by as much as their own size
        weights = self.actor.state_dict()
        for initializer in self._onnx_model.graph.initializer:
            name = initializer.name[len(ONNX_PREFIX):]
            initializer.CopyFrom(numpy_helper.from_array(weights[name].detach().cpu().numpy(), initializer.name))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(self._onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, obs: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """obs uint8 (k, 84, 84), state float32 (state_dim,) -> action (action_dim,), features (512,)."""
        if self._session is not None:
            action, features = self._session.run(
                None, {"obs": obs[None], "state": np.asarray(state, dtype=np.float32)[None]})
            return action[0], features[0]
        with torch.inference_mode():
            o = torch.from_numpy(np.ascontiguousarray(obs)).to(self.device)[None]
            s = torch.from_numpy(np.asarray(state, dtype=np.float32)).to(self.device)[None]
            features = self.actor.encoder(o)
            action = self.actor.head(features, s)
            return action[0].cpu().numpy(), features[0].cpu().numpy()


def export_onnx_graph(architecture: ActorArchitecture) -> Any:
    """The actor of ``architecture`` as an ONNX ModelProto with one initializer per state-dict entry,
    named ``actor.<key>``.

    Exported from distinct random weights without constant folding: the exporter merges
    initializers of equal value (fresh zero biases would share one), and a merged pair could
    not take two different trained values later."""
    import onnx

    with torch.random.fork_rng(devices=[]), torch.no_grad():  # training draws from the global generator
        torch.manual_seed(0)
        actor = build_actor(architecture).eval()
        for tensor in actor.state_dict().values():
            tensor.copy_(torch.rand_like(tensor))
    obs = torch.zeros(1, architecture.frame_stack, T.FRAME_SIZE, T.FRAME_SIZE, dtype=torch.uint8)
    state = torch.zeros(1, architecture.state_dim)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(_ActionAndFeatures(actor), (obs, state), buffer, dynamo=False, do_constant_folding=False,
                          input_names=["obs", "state"], output_names=["action", "features"], opset_version=17)
    model = onnx.load_from_string(buffer.getvalue())
    exported = {initializer.name for initializer in model.graph.initializer}
    expected = {ONNX_PREFIX + name for name in actor.state_dict()}
    if exported != expected:  # an exporter that renames or folds weights: loads would go wrong silently
        raise RuntimeError(f"ONNX export does not name one initializer per weight: "
                           f"missing {sorted(expected - exported)}, unexpected {sorted(exported - expected)}")
    return model


def _has_onnxruntime() -> bool:
    """Both halves of the ONNX path installed (the ``fast`` extra): onnx to edit the graph, the runtime to run it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True

import dataclasses
import json
import struct

import pytest
import torch

from td3_drive.rl.learner import Learner, LearnerConfig
from td3_drive.rl.weights import MAX_WEIGHT_BYTES, WeightsRejected, decode_actor, encode_actor

ARCH = LearnerConfig().actor_architecture()


SOURCE = Learner(seed=3)


@pytest.fixture(scope="module")
def blob() -> bytes:
    return encode_actor(SOURCE.actor(), 42, ARCH)


def test_round_trip(blob):
    decoded = decode_actor(blob, ARCH)
    assert decoded.version == 42 and decoded.architecture == ARCH
    reference = SOURCE.actor().state_dict()
    assert decoded.state_dict.keys() == reference.keys()
    for name, tensor in reference.items():  # the values, not just the names
        assert torch.equal(torch.as_tensor(decoded.state_dict[name]), tensor), name
    other = Learner(seed=4).actor().state_dict()
    assert any(not torch.equal(other[n], t) for n, t in reference.items()), "seeds give different weights"


def reason(data: bytes, arch=ARCH, **kw) -> str:
    with pytest.raises(WeightsRejected) as info:
        decode_actor(data, arch, **kw)
    return info.value.reason


def test_rejections(blob):
    assert reason(b"") == "truncated"
    assert reason(b"\xff" * 8 + b"{}") == "bad_header"
    assert reason(struct.pack("<Q", 5) + b"nojsn") == "bad_header"
    assert reason(blob[: len(blob) // 2]) == "bad_data"
    assert reason(blob, max_bytes=1000) == "oversized"
    assert reason(blob, arch=dataclasses.replace(ARCH, state_dim=10)) == "wrong_architecture"
    other = LearnerConfig(layer_norm=False)
    assert reason(encode_actor(Learner(other).actor(), 1, other.actor_architecture())) == "wrong_architecture"


def test_lying_metadata_is_caught_by_layout():
    other = LearnerConfig(hidden=(64, 64))
    data = encode_actor(Learner(other).actor(), 1, ARCH)  # claims the default architecture
    assert reason(data) == "wrong_architecture"


def test_non_finite_values_rejected(blob):
    header_len = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + header_len])
    start, _ = header["head.net.0.bias"]["data_offsets"]
    data = bytearray(blob)
    data[8 + header_len + start : 8 + header_len + start + 4] = struct.pack("<f", float("nan"))
    assert reason(bytes(data)) == "non_finite"


def test_foreign_format(blob):
    from safetensors.torch import save

    data = save({"x": torch.zeros(2)}, metadata={"format": "something-else"})
    assert reason(data) == "wrong_format"
    assert MAX_WEIGHT_BYTES > len(blob)


def test_the_architecture_travels_as_the_json_it_always_was():
    from td3_drive.rl.models import ActorArchitecture

    text = ARCH.to_json()
    assert json.loads(text) == {"frame_stack": 4, "state_dim": 53, "action_dim": 2, "layer_norm": True,
                                "hidden": [256, 256], "feature_dim": 512, "trunk_dim": 50}
    assert ActorArchitecture.from_dict(json.loads(text)) == ARCH
    legacy = {k: v for k, v in json.loads(text).items() if k != "trunk_dim"}  # written before the trunk
    assert ActorArchitecture.from_dict(legacy).trunk_dim == 0


@pytest.mark.parametrize("change", [{"frame_stack": "4"}, {"layer_norm": 1}, {"hidden": [256, "x"]},
                                    {"colour": True}, {"frame_stack": None}])
def test_metadata_that_is_no_architecture_is_rejected(change):
    from safetensors.torch import save

    from td3_drive.rl.weights import FORMAT

    arch = {**json.loads(ARCH.to_json()), **change}
    data = save({"x": torch.zeros(2)}, metadata={"format": FORMAT, "version": "1", "architecture": json.dumps(arch)})
    assert reason(data) == "bad_metadata"


@pytest.mark.parametrize("metadata", [5, "td3_drive.actor.v1", [1, 2]])
def test_metadata_that_is_no_object_is_rejected_not_raised(metadata):
    header = json.dumps({"__metadata__": metadata}).encode()
    assert reason(struct.pack("<Q", len(header)) + header) == "bad_metadata"

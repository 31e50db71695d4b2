import json

import numpy as np
import pytest
import torch

from td3_drive.rl.checkpoint import Checkpointer, CheckpointError, atomic_write_bytes
from td3_drive.rl.learner import Learner, LearnerConfig
from td3_drive.rl.replay import ReplayBuffer
from td3_drive.rl.synthetic import random_batch

CONFIG = LearnerConfig(encoder_mode="separate", augment=True)


def batches(n: int):
    return [random_batch(4, "cpu", seed=i) for i in range(n)]


def all_params(learner: Learner) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v for n, m in learner.modules().items() for k, v in m.state_dict().items()}


def test_exact_resume_is_bit_identical(tmp_path):
    data = batches(7)
    uninterrupted = Learner(CONFIG, seed=5)
    for b in data:
        uninterrupted.update(b)

    first = Learner(CONFIG, seed=5)
    for b in data[:3]:
        first.update(b)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(3, first, {"env_steps": 12})
    torch.manual_seed(1234)  # whatever happens to global RNG in between must not matter

    resumed = Learner(CONFIG, seed=99)
    checkpoint = checkpointer.restore(checkpointer.latest(), resumed)
    assert checkpoint.state["state"] == {"env_steps": 12}
    for b in data[3:]:
        resumed.update(b)
    a, b = all_params(uninterrupted), all_params(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.num_updates == 7 and resumed.num_actor_updates == uninterrupted.num_actor_updates
    for opt_a, opt_b in zip(uninterrupted.optimizers().values(), resumed.optimizers().values()):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_checkpoint_contains_no_pickle_and_an_exported_actor(tmp_path):
    from td3_drive.rl.weights import decode_actor

    learner = Learner(CONFIG)
    path = Checkpointer(tmp_path).save(0, learner)
    assert sorted(p.name for p in path.iterdir()) == [
        "actor.safetensors", "model.safetensors", "optim.safetensors", "state.json"]
    for file in path.iterdir():
        data = file.read_bytes()
        if file.suffix == ".json":
            json.loads(data)
            continue
        # safetensors: u64 little-endian header length, then a JSON header, then raw tensor bytes.
        # (A pickle starts with 0x80 and a protocol byte; a safetensors header length may too, so
        # the format is checked, not the first byte.)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        assert all(set(v) == {"dtype", "shape", "data_offsets"} for k, v in header.items() if k != "__metadata__")
    decoded = decode_actor((path / "actor.safetensors").read_bytes(), CONFIG.actor_architecture())
    assert decoded.version == 0


def test_replay_round_trip_through_checkpoint(tmp_path):
    replay = ReplayBuffer(100, state_dim=53, seed=3)
    rng = np.random.default_rng(0)
    replay.start_episode(rng.integers(0, 255, (84, 84), dtype=np.uint8), np.zeros(53, np.float32))
    for t in range(30):
        replay.add(np.zeros(2, np.float32), float(t), rng.integers(0, 255, (84, 84), dtype=np.uint8),
                   np.full(53, t, np.float32), False, t == 29)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, Learner(CONFIG), replay_state=replay.state_dict())
    restored = ReplayBuffer(100, state_dim=53, seed=0)
    restored.load_state_dict(Checkpointer.replay_state(checkpointer.load(checkpointer.latest())))
    a, b = replay.sample(16), restored.sample(16)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward)


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=5)
    learner = Learner(CONFIG)
    good = checkpointer.save(1, learner)
    bad = checkpointer.save(2, learner)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(blob))
    assert checkpointer.latest() == good
    with pytest.raises(CheckpointError):
        checkpointer.load(bad)


def test_partial_save_is_invisible_and_cleaned(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    learner = Learner(CONFIG)
    good = checkpointer.save(1, learner)
    stale = tmp_path / ".step_000000000002.tmp-4242"  # what a kill -9 mid-save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert checkpointer.latest() == good
    checkpointer.save(3, learner)
    assert not stale.exists()


def test_keep_prunes_old_checkpoints(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=2)
    learner = Learner(CONFIG)
    for step in range(4):
        checkpointer.save(step, learner)
    assert [p.name for p in checkpointer.list()] == ["step_000000000002", "step_000000000003"]


def test_config_mismatch_is_refused(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    path = checkpointer.save(1, Learner(CONFIG))
    with pytest.raises(CheckpointError, match="config"):
        checkpointer.restore(path, Learner(LearnerConfig(encoder_mode="shared")))


def test_non_finite_learner_is_not_checkpointed(tmp_path):
    learner = Learner(CONFIG)
    with torch.no_grad():
        learner.critic_heads.qs[0][0].weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError):
        Checkpointer(tmp_path).save(1, learner)


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_bytes(target, json.dumps({"a": 1}).encode())
    atomic_write_bytes(target, json.dumps({"a": 2}).encode())
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_resolve_actor_file_accepts_every_documented_form(tmp_path):
    from td3_drive.rl.checkpoint import resolve_actor_file

    run = tmp_path / "run"
    checkpointer = Checkpointer(run / "checkpoints")
    learner = Learner(CONFIG)
    checkpointer.save(1, learner)
    newest = checkpointer.save(2, learner)
    actor = newest / "actor.safetensors"
    for form in (run, run / "checkpoints", newest, actor, str(run)):
        assert resolve_actor_file(form) == actor
    with pytest.raises(FileNotFoundError, match="no actor weights at"):
        resolve_actor_file(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError):
        resolve_actor_file(tmp_path)  # a directory without checkpoints is not silently accepted

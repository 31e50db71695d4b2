"""Replay buffer: every sample is checked against a brute-force oracle of the same call log.

Frames and states encode (episode, step), so a stack that crosses an episode, is out of
order, or reads a slot overwritten by the ring shows up as a pixel mismatch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from td3_drive.app.bench import measure_replay
from td3_drive.rl.replay import Batch, ReplayBuffer

SHAPE = (3, 3)


def frame(ep: int, step: int) -> np.ndarray:
    f = np.full(SHAPE, (ep * 7 + step) % 256, dtype=np.uint8)
    f[0, 0], f[0, 1], f[0, 2] = ep % 256, step % 256, (step // 256) % 256
    return f


def state(ep: int, step: int) -> np.ndarray:
    return np.array([ep, step, 0.5], dtype=np.float32)


def action(ep: int, step: int) -> np.ndarray:
    return np.array([ep / 64, step / 1024], dtype=np.float32)


def reward(ep: int, step: int) -> float:
    return float((ep * 3 + step) % 5) - 1.5


class Log:
    """Mirror of the calls made on a buffer, and the oracle of what it must sample."""

    def __init__(self) -> None:
        self.obs: list[tuple[int, int]] = []  # (episode, step) of observation number g
        self.trans: dict[int, list] = {}  # g -> [reward, terminated, truncated]
        self.index: dict[tuple[int, int], int] = {}
        self.ep = -1
        self.open = False

    def start(self, buf: ReplayBuffer) -> None:
        if self.open and self.obs[-1][1] > 0:
            self.trans[len(self.obs) - 2][2] = True  # a restart truncates the running episode
        self.ep += 1
        self.open = True
        self.index[(self.ep, 0)] = len(self.obs)
        self.obs.append((self.ep, 0))
        buf.start_episode(frame(self.ep, 0), state(self.ep, 0))

    def step(self, buf: ReplayBuffer, terminated: bool = False, truncated: bool = False) -> None:
        ep, s = self.obs[-1]
        self.trans[len(self.obs) - 1] = [reward(ep, s), terminated, truncated]
        self.index[(ep, s + 1)] = len(self.obs)
        self.obs.append((ep, s + 1))
        self.open = not (terminated or truncated)
        buf.add(action(ep, s), reward(ep, s), frame(ep, s + 1), state(ep, s + 1), terminated, truncated)

    def expected(self, capacity: int, k: int, n: int, gamma: float, oldest: int | None = None) -> dict:
        """g -> (stack frame ids, n-step reward, discount, next g) for every valid start."""
        total = len(self.obs)
        oldest = max(0, total - capacity) if oldest is None else oldest
        out = {}
        for g in range(oldest, total):
            ep, s = self.obs[g]
            if g - s + max(s - k + 1, 0) < oldest:  # first frame of the stack is gone
                continue
            ret, m, disc = 0.0, 0, 1.0
            while True:
                if g + m not in self.trans:
                    m = None
                    break
                r, term, trunc = self.trans[g + m]
                ret += gamma**m * r
                m += 1
                if term:
                    disc = 0.0
                    break
                if trunc or m == n:
                    disc = gamma**m
                    break
            if m is None:
                continue
            stack = [(ep, max(s - k + 1 + j, 0)) for j in range(k)]
            out[g] = (stack, ret, disc, g + m)
        return out


def check(buf: ReplayBuffer, log: Log, batch_size: int = 512, oldest: int | None = None) -> dict:
    exp = log.expected(buf.capacity, buf.frame_stack, buf.n_step, buf.gamma, oldest)
    assert len(buf) == len(exp)
    if not exp:
        with pytest.raises(ValueError):
            buf.sample(1)
        return exp
    b = buf.sample(batch_size)
    seen = set()
    for i in range(batch_size):
        ep, s = int(b.state[i, 0]), int(b.state[i, 1])
        g = log.index[(ep, s)]
        assert g in exp, f"sampled invalid start {(ep, s)}"
        stack, ret, disc, nxt = exp[g]
        seen.add(g)
        np.testing.assert_array_equal(b.obs[i].numpy(), np.stack([frame(*x) for x in stack]))
        nep, ns = log.obs[nxt]
        next_stack = [(nep, max(ns - buf.frame_stack + 1 + j, 0)) for j in range(buf.frame_stack)]
        np.testing.assert_array_equal(b.next_obs[i].numpy(), np.stack([frame(*x) for x in next_stack]))
        np.testing.assert_array_equal(b.next_state[i].numpy(), state(nep, ns))
        np.testing.assert_array_equal(b.action[i].numpy(), action(ep, s))
        assert b.reward[i, 0].item() == pytest.approx(ret, rel=1e-5, abs=1e-5)
        assert b.discount[i, 0].item() == pytest.approx(disc, rel=1e-6, abs=1e-7)
    if len(exp) <= batch_size // 8:  # small sets: uniform sampling must hit every transition
        assert seen == set(exp)
    return exp


def make(capacity: int = 100, k: int = 4, n: int = 1, gamma: float = 0.9, **kw) -> ReplayBuffer:
    return ReplayBuffer(capacity, frame_shape=SHAPE, frame_stack=k, state_dim=3, n_step=n, gamma=gamma, **kw)


def run(buf: ReplayBuffer, log: Log, lengths: list[int], ends: str = "t") -> None:
    for i, length in enumerate(lengths):
        log.start(buf)
        for s in range(length):
            last = s == length - 1
            kind = ends[i % len(ends)]
            log.step(buf, terminated=last and kind == "t", truncated=last and kind == "u")


def test_batch_types_and_shapes():
    buf, log = make(), Log()
    run(buf, log, [5, 6])
    b = buf.sample(8)
    assert isinstance(b, Batch)
    assert b.obs.dtype == torch.uint8 and b.obs.shape == (8, 4, *SHAPE) and b.next_obs.shape == (8, 4, *SHAPE)
    assert b.state.dtype == torch.float32 and b.state.shape == (8, 3) and b.next_state.shape == (8, 3)
    assert b.action.shape == (8, 2) and b.reward.shape == (8, 1) and b.discount.shape == (8, 1)
    assert b.reward.dtype == torch.float32 and b.discount.dtype == torch.float32


def test_stacks_at_episode_boundaries_are_exact():
    buf, log = make(k=4), Log()
    run(buf, log, [1, 2, 3, 7, 1], ends="tu")
    exp = check(buf, log)
    # start of episode 1 (step 0): the first frame repeated, nothing from episode 0
    stack, *_ = exp[log.index[(1, 0)]]
    assert stack == [(1, 0)] * 4
    assert exp[log.index[(3, 2)]][0] == [(3, 0), (3, 0), (3, 1), (3, 2)]
    # the last observation of an episode is never a start
    assert all(log.index[(e, s)] not in exp for e, s in [(0, 1), (1, 2), (2, 3), (3, 7), (4, 1)])


def test_n_step_termination_inside_window():
    buf, log = make(n=3, gamma=0.5), Log()
    run(buf, log, [4], ends="t")  # rewards of episode 0: -1.5, -0.5, 0.5, 1.5
    exp = check(buf, log)
    r = [-1.5, -0.5, 0.5, 1.5]
    assert exp[0][1:] == (pytest.approx(r[0] + 0.5 * r[1] + 0.25 * r[2]), 0.125, 3)
    assert exp[1][1:] == (pytest.approx(r[1] + 0.5 * r[2] + 0.25 * r[3]), 0.0, 4)
    assert exp[2][1:] == (pytest.approx(r[2] + 0.5 * r[3]), 0.0, 4)
    assert exp[3][1:] == (pytest.approx(r[3]), 0.0, 4)
    assert sorted(exp) == [0, 1, 2, 3]


def test_n_step_truncation_bootstraps():
    buf, log = make(n=3, gamma=0.5), Log()
    run(buf, log, [4], ends="u")
    exp = check(buf, log)
    assert [exp[g][2] for g in range(4)] == [0.125, 0.125, 0.25, 0.5]
    assert [exp[g][3] for g in range(4)] == [3, 4, 4, 4]


def test_incomplete_window_is_not_sampled():
    buf, log = make(n=3), Log()
    log.start(buf)
    log.step(buf)
    log.step(buf)
    assert len(buf) == 0
    with pytest.raises(ValueError, match="no complete transition"):
        buf.sample(4)
    log.step(buf)
    assert len(buf) == 1
    check(buf, log)


def test_restart_mid_episode_truncates_it():
    buf, log = make(n=2, gamma=0.5), Log()
    log.start(buf)
    for _ in range(3):
        log.step(buf)
    assert len(buf) == 2  # starts 0 and 1 have full windows, 2 does not yet
    log.start(buf)  # environment reset without an end flag
    exp = check(buf, log)
    assert exp[2][2] == 0.5 and exp[2][3] == 3  # bootstraps from the last observation


def test_ring_wrap_never_yields_stale_frames():
    buf, log = make(capacity=10, k=4, n=2), Log()
    run(buf, log, [3, 30])
    exp = check(buf, log)
    total = len(log.obs)  # 35 observations, ring keeps 25..34
    assert min(exp) == total - 10 + 3  # the first 3 kept frames only serve as stack history
    for lengths in ([2, 2, 2, 9, 1, 4], [12], [1] * 9):
        run(buf, log, lengths, ends="tu")
        check(buf, log)


def test_long_episode_outliving_the_ring():
    buf, log = make(capacity=12, k=3, n=3), Log()
    run(buf, log, [50], ends="u")
    check(buf, log)


def test_incremental_validity_matches_rebuild():
    buf, log = make(capacity=23, k=3, n=3), Log()
    run(buf, log, [5, 1, 9, 2, 14, 3, 1, 7], ends="tuut")
    before = buf._valid.copy()
    buf._rebuild_valid()
    np.testing.assert_array_equal(before, buf._valid)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=14),
    ends=st.text(alphabet="tuo", min_size=1, max_size=5),
    k=st.integers(1, 4),
    n=st.integers(1, 4),
    extra=st.integers(1, 30),
)
def test_property_stacks_are_one_episode_in_order(lengths, ends, k, n, extra):
    """Random episode lengths and ends ('o' = restarted without an end flag)."""
    buf, log = make(capacity=k + n + extra, k=k, n=n, gamma=0.8), Log()
    for i, length in enumerate(lengths):
        kind = ends[i % len(ends)]
        length = max(length, 1) if kind != "o" else length
        log.start(buf)
        for s in range(length):
            last = s == length - 1
            log.step(buf, terminated=last and kind == "t", truncated=last and kind == "u")
    exp = log.expected(buf.capacity, k, n, 0.8)
    assert len(buf) == len(exp)
    if exp:
        b = buf.sample(64)
        ids = b.obs[:, :, 0, :2].numpy().astype(int)  # (B, k, 2): episode, step per frame
        assert (ids[:, :, 0] == ids[:, :1, 0]).all(), "stack mixes episodes"
        steps = ids[:, :, 1]
        assert (np.diff(steps, axis=1) >= 0).all() and (np.diff(steps, axis=1) <= 1).all()
        assert ((np.diff(steps, axis=1) == 0) <= (steps[:, :-1] == 0)).all(), "repeats only the first frame"
        check(buf, log, batch_size=64)
    before = buf._valid.copy()
    buf._rebuild_valid()
    np.testing.assert_array_equal(before, buf._valid)


def test_bytes_per_transition_budget():
    buf = ReplayBuffer(1000)
    assert buf.bytes_per_transition <= 7500
    assert buf.bytes_per_transition >= 84 * 84 + 53 * 4 + 2 * 4 + 4 + 2


def test_uniform_over_valid():
    buf, log = make(capacity=200, k=2), Log()
    run(buf, log, [4, 4, 4, 4, 4])
    b = buf.sample(20_000)
    counts = np.bincount(b.state[:, 0].long().numpy() * 10 + b.state[:, 1].long().numpy())
    counts = counts[counts > 0]
    assert counts.size == 20 and counts.min() > 800 and counts.max() < 1200  # 1000 +- 6 sigma


def test_state_dict_round_trip_gives_identical_samples():
    buf, log = make(capacity=40, n=3, seed=3), Log()
    run(buf, log, [7, 9, 30, 5], ends="tuo")
    buf.sample(16)  # move the RNG off its seed
    sd = buf.state_dict()
    arrays = {k: np.array(v) for k, v in sd.items() if isinstance(v, np.ndarray)}
    scalars = json.loads(json.dumps({k: v for k, v in sd.items() if not isinstance(v, np.ndarray)}))
    other = make(capacity=40, n=3, seed=99)
    other.load_state_dict({**arrays, **scalars})
    assert len(other) == len(buf)
    for _ in range(3):
        a, b = buf.sample(32), other.sample(32)
        for field in ("obs", "state", "action", "reward", "discount", "next_obs", "next_state"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    for target in (buf, other):  # and after further identical steps
        target.start_episode(frame(9, 0), state(9, 0))
        for s in range(5):
            target.add(action(9, s), 1.0, frame(9, s + 1), state(9, s + 1), s == 4, False)
    a, b = buf.sample(64), other.sample(64)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward)
    with pytest.raises(ValueError, match="layout"):
        make(capacity=41).load_state_dict({**arrays, **scalars})


def test_memmap_reopen_resumes(tmp_path: Path):
    d = tmp_path / "replay"
    buf, log = make(capacity=30, n=2, directory=d, seed=5), Log()
    run(buf, log, [6, 8, 25])
    buf.sample(8)
    buf.flush()
    ram = make(capacity=30, n=2)
    ram.load_state_dict({k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in buf.state_dict().items()})
    del buf
    again = make(capacity=30, n=2, directory=d)
    assert len(again) == len(ram) > 0
    a, b = again.sample(32), ram.sample(32)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.next_state, b.next_state)
    check(again, log)
    run(again, log, [4, 5])  # keeps going where it left off
    check(again, log)
    with pytest.raises(ValueError, match="layout"):
        ReplayBuffer(30, frame_shape=(4, 4), state_dim=3, directory=d)
    again.flush()
    meta = json.loads((d / "replay.json").read_text())
    assert meta["version"] == 1 and not list(d.glob("*.tmp"))  # written atomically, versioned
    (d / "replay.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(ValueError, match="format version 2"):
        make(capacity=30, n=2, directory=d)
    (d / "replay.json").write_text(json.dumps(meta))
    reward = np.load(d / "reward.npy")
    np.save(d / "reward.npy", reward.astype(np.float64))  # the right shape, another dtype: refused
    with pytest.raises(ValueError, match="reward.npy"):
        make(capacity=30, n=2, directory=d)


def test_memmap_reopen_mid_episode_ends_it_truncated(tmp_path: Path):
    buf, log = make(capacity=30, n=2, directory=tmp_path), Log()
    log.start(buf)
    for _ in range(5):
        log.step(buf)
    buf.flush()
    again = make(capacity=30, n=2, directory=tmp_path)
    with pytest.raises(ValueError, match="start_episode"):
        again.add(action(0, 5), 0.0, frame(0, 6), state(0, 6), False, False)
    log.trans[4][2] = True  # what reopening did to the open episode
    log.open = False
    check(again, log)


def before_the_flush(log: Log, buf: ReplayBuffer) -> None:
    """What the killed child writes before its flush (the parent replays it into a log)."""
    for length in (7, 3, 12, 30, 9):
        log.start(buf)
        for s in range(length):
            log.step(buf, terminated=s == length - 1 and length % 2 == 1)
    log.start(buf)
    log.step(buf)


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {test_dir!r})
    from test_replay import Log, before_the_flush, make
    buf, log = make(capacity=40, k=4, n=2, directory={d!r}), Log()
    before_the_flush(log, buf)
    buf.flush()
    print(len(log.obs), flush=True)
    for s in range(25):  # overwrite flushed slots, then die without flushing
        log.step(buf)
    log.start(buf)
    log.step(buf)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_minus_9_reopens_consistent(tmp_path: Path):
    d = tmp_path / "replay"
    code = CHILD.format(test_dir=str(Path(__file__).parent), d=str(d))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    flushed_total = int(proc.stdout.split()[0])
    # replay the same calls up to the flush in a log
    log = Log()
    before_the_flush(log, make(capacity=40, k=4, n=2))
    assert len(log.obs) == flushed_total
    log.trans[flushed_total - 2][2] = True  # reopening ends the open episode as truncated
    again = make(capacity=40, k=4, n=2, directory=d)
    assert again._total == flushed_total
    assert flushed_total - 40 + 26 <= again._oldest <= flushed_total - 40 + 27  # slots rewritten after the flush
    exp = check(again, log, batch_size=1024, oldest=again._oldest)
    assert len(exp) > 0


def test_reopen_after_unflushed_writes_drops_exactly_the_overwritten_slots(tmp_path: Path):
    """The kill -9 test, in process and exact: what was written after the last flush is in the memmaps
    (another mapping of the same files sees it) but not in replay.json; reopening must drop exactly the
    overwritten prefix and forget the outgoing step of the last flushed observation."""
    d = tmp_path / "replay"
    buf, writer_log = make(capacity=40, k=4, n=2, directory=d), Log()
    before_the_flush(writer_log, buf)
    buf.flush()
    flushed_total = len(writer_log.obs)
    for _ in range(25):  # overwrite flushed slots; never flushed
        writer_log.step(buf)
    writer_log.start(buf)
    writer_log.step(buf)
    written_after = len(writer_log.obs) - flushed_total  # 27 observations: the 27 oldest slots are gone
    again = make(capacity=40, k=4, n=2, directory=d)  # as a crash leaves the directory
    assert again._total == flushed_total
    assert again._oldest == flushed_total - 40 + written_after
    last = (flushed_total - 1) % 40  # its outgoing step was written after the flush: not a transition now
    arrays = again._arrays
    assert (arrays["action"][last] == 0).all() and arrays["reward"][last] == 0
    assert not arrays["terminated"][last] and not arrays["truncated"][last]
    log = Log()
    before_the_flush(log, make(capacity=40, k=4, n=2))
    log.trans[flushed_total - 2][2] = True  # reopening ends the open episode as truncated
    check(again, log, batch_size=1024, oldest=again._oldest)


def test_misuse_and_bad_input_raise_and_leave_buffer_unchanged():
    buf, log = make(), Log()
    with pytest.raises(ValueError, match="start_episode"):
        buf.add(action(0, 0), 0.0, frame(0, 1), state(0, 1), False, False)
    log.start(buf)
    log.step(buf)
    total, n = buf._total, len(buf)
    bad = [
        dict(action=np.array([0.0, np.nan], np.float32)),
        dict(action=np.zeros(3, np.float32)),
        dict(reward=float("inf")),
        dict(reward=1e39),  # overflows float32
        dict(reward="x"),
        dict(next_frame=frame(0, 2).astype(np.float32)),
        dict(next_frame=np.zeros((4, 4), np.uint8)),
        dict(next_state=np.array([0.0, 1.0, np.inf], np.float32)),
        dict(next_state=np.zeros(2, np.float32)),
        dict(next_state=np.array(["a", "b", "c"])),
    ]
    good = dict(action=action(0, 1), reward=0.0, next_frame=frame(0, 2), next_state=state(0, 2),
                terminated=False, truncated=False)
    for change in bad:
        with pytest.raises(ValueError):
            buf.add(**{**good, **change})
    with pytest.raises(ValueError):
        buf.start_episode(frame(1, 0), np.full(3, np.nan, np.float32))
    assert buf._total == total and len(buf) == n
    buf.add(**{**good, "terminated": True})
    with pytest.raises(ValueError, match="start_episode"):
        buf.add(**good)
    with pytest.raises(ValueError):
        ReplayBuffer(5, frame_stack=4, n_step=3)


def test_large_memmap_allocates_nothing_up_front(tmp_path: Path):
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    buf = ReplayBuffer(1_000_000, directory=tmp_path)
    assert rss() - before < 64 * 2**20
    disk = sum(p.stat().st_blocks * 512 for p in tmp_path.iterdir())
    assert disk < 64 * 2**20  # sparse: 7 GB of logical size
    buf.start_episode(np.zeros((84, 84), np.uint8), np.zeros(53, np.float32))
    buf.add(np.zeros(2, np.float32), 1.0, np.ones((84, 84), np.uint8), np.zeros(53, np.float32), True, False)
    assert len(buf) == 1 and buf.sample(2).obs.shape == (2, 4, 84, 84)


def test_zero_state_dim():
    buf = ReplayBuffer(20, frame_shape=SHAPE, state_dim=0)
    buf.start_episode(frame(0, 0), None)
    buf.add(np.zeros(2), 1.0, frame(0, 1), np.zeros(0, np.float32), False, True)
    b = buf.sample(4)
    assert b.state.shape == (4, 0) and b.discount[0, 0].item() == pytest.approx(0.99)


def test_measure_figures():
    m = measure_replay(capacity=2000, batch_size=64)
    assert set(m) == {"bytes_per_transition", "sample_ms_p50", "add_us_p50"}
    assert m["bytes_per_transition"] <= 7500 and m["sample_ms_p50"] > 0 and m["add_us_p50"] > 0


def test_sparse_valid_set_is_still_sampled_uniformly():
    """Almost every slot invalid (lone restarts): sampling enumerates instead of rejecting."""
    buf, log = make(capacity=300, k=2), Log()
    run(buf, log, [0] * 200 + [1, 1], ends="o")
    assert len(buf) == 2
    check(buf, log, batch_size=64)


def test_zero_state_dim_memmap_reopen(tmp_path: Path):
    buf = ReplayBuffer(20, frame_shape=SHAPE, state_dim=0, directory=tmp_path)
    buf.start_episode(frame(0, 0), None)
    buf.add(np.zeros(2), 1.0, frame(0, 1), None, True, False)
    buf.flush()
    again = ReplayBuffer(20, frame_shape=SHAPE, state_dim=0, directory=tmp_path)
    assert len(again) == 1 and again.sample(2).next_obs[0, -1, 0, 1].item() == 1


def test_vehicle_replay_samples_each_stream_in_proportion_to_its_size() -> None:
    """Several vehicles, one batch: a transition of any stream is as likely as any other, so a
    stream holding three times the transitions fills three times the batch slots."""
    from td3_drive.rl.replay import VehicleReplay

    replay = VehicleReplay(2, capacity=400, frame_shape=(4, 4), frame_stack=1, state_dim=1, n_step=1, seed=5)
    frame = np.zeros((4, 4), np.uint8)
    for stream, count in ((0, 30), (1, 90)):
        replay.start_episode(stream, frame, np.zeros(1, np.float32))
        for _ in range(count):  # the action tells the stream apart
            replay.add(stream, np.full(2, float(stream), np.float32), 0.0, frame, np.zeros(1, np.float32),
                       False, False)
    assert len(replay) == 120
    actions = np.concatenate([replay.sample_arrays(64)["action"][:, 0] for _ in range(200)])
    assert actions.size == 200 * 64
    assert abs((actions == 1.0).mean() - 0.75) < 0.02  # 90 / 120
    assert set(np.unique(actions)) == {0.0, 1.0}


def test_vehicle_replay_state_round_trip_resumes_sampling_exactly() -> None:
    from td3_drive.rl.replay import VehicleReplay

    def filled(seed: int) -> VehicleReplay:
        replay = VehicleReplay(2, capacity=200, frame_shape=(4, 4), frame_stack=2, state_dim=1, n_step=2, seed=seed)
        for stream, count in ((0, 20), (1, 35)):
            replay.start_episode(stream, np.full((4, 4), stream, np.uint8), np.zeros(1, np.float32))
            for i in range(count):
                replay.add(stream, np.array([stream, i], np.float32), float(i), np.full((4, 4), i, np.uint8),
                           np.full(1, i, np.float32), i == count - 1, False)
        return replay

    original = filled(seed=3)
    state = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in original.state_dict().items()}
    assert {"split_rng_state", "stream0/total", "stream1/total"} <= set(state)
    restored = VehicleReplay(2, capacity=200, frame_shape=(4, 4), frame_stack=2, state_dim=1, n_step=2, seed=99)
    restored.load_state_dict(state)
    assert len(restored) == len(original)
    for _ in range(3):  # the same batches: contents and both RNGs (stream split, per-stream draw) restored
        a, b = original.sample(16), restored.sample(16)
        for name in ("obs", "action", "reward", "discount", "next_obs", "state", "next_state"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(ValueError, match="does not hold 3 vehicle streams"):
        VehicleReplay(3, capacity=300, frame_shape=(4, 4), frame_stack=2, state_dim=1, n_step=2).load_state_dict(state)
    one = VehicleReplay(1, capacity=100, frame_shape=(4, 4), frame_stack=2, state_dim=1, n_step=2)
    assert "split_rng_state" not in one.state_dict()
    with pytest.raises(ValueError, match="several vehicle streams"):
        one.load_state_dict(state)


def test_vehicle_replay_streams_their_rings_seeds_and_folders(tmp_path: Path) -> None:
    from td3_drive.rl.replay import VehicleReplay

    with pytest.raises(ValueError):
        VehicleReplay(0, capacity=10)
    kw = dict(frame_shape=(4, 4), frame_stack=1, state_dim=1, n_step=1)
    one = VehicleReplay(1, capacity=50, directory=tmp_path / "one", **kw)
    two = VehicleReplay(2, capacity=101, directory=tmp_path / "two", **kw)
    assert one.buffers[0].directory == tmp_path / "one" and [b.capacity for b in two.buffers] == [50, 50]
    assert [b.directory for b in two.buffers] == [tmp_path / "two" / "stream0", tmp_path / "two" / "stream1"]
    frame, state = np.zeros((4, 4), np.uint8), np.zeros(1, np.float32)
    with pytest.raises(ValueError):
        two.sample_arrays(4)  # nothing yet
    one.start_episode(0, frame, state)
    one.add(0, np.zeros(2, np.float32), 1.0, frame, state, True, False)
    assert one.sample_arrays(3)["discount"].tolist() == [[0.0]] * 3  # terminated: no bootstrap
    two.start_episode(1, frame, state)
    two.add(1, np.ones(2, np.float32), 1.0, frame, state, False, True)  # truncated: bootstraps
    batch = two.sample_arrays(5)  # one transition in all, in the second ring
    assert batch["action"].tolist() == [[1.0, 1.0]] * 5 and np.allclose(batch["discount"], 0.99)

    def draws(seed: int) -> list:
        replay = VehicleReplay(2, capacity=200, seed=seed, **kw)
        for stream in (0, 1):
            replay.start_episode(stream, frame, state)
            for i in range(30):
                replay.add(stream, np.array([stream, i], np.float32), 0.0, frame, state, False, False)
        return [replay.sample_arrays(8)["action"].tolist() for _ in range(3)]

    assert draws(4) == draws(4) != draws(5)
    twins = VehicleReplay(2, capacity=200, seed=4, **kw)  # the same content in both rings
    for stream in (0, 1):
        twins.start_episode(stream, frame, state)
        for i in range(30):
            twins.add(stream, np.array([0, i], np.float32), 0.0, frame, state, False, False)
    picks = [b.sample_arrays(16)["action"][:, 1].tolist() for b in twins.buffers]
    assert picks[0] != picks[1], "each ring draws with its own seed"

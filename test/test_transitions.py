"""TransitionAssembler: observations and actions in any arrival order -> transitions in stamp order."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from td3_drive.driving.transitions import Observation, Restart, Step, TransitionAssembler


def obs(t: float) -> Observation:
    return Observation(t, np.full((2, 2), int(t * 10) % 256, np.uint8), np.array([t], np.float32))


def act(t: float) -> np.ndarray:
    return np.array([t, -t], np.float32)  # an action that names its stamp


def steps_of(outcomes) -> list[tuple[float, float, float]]:
    return [(s.observation.stamp, float(s.action[0]), s.next.stamp) for s in outcomes if isinstance(s, Step)]


def test_in_order_arrival():
    chain = TransitionAssembler()
    chain.start(obs(1.0))
    out, reason = chain.add_action(1.0, act(1.0))
    assert out == [] and reason == ""
    assert steps_of(chain.add_observation(obs(2.0))) == [(1.0, 1.0, 2.0)]
    assert chain.current_stamp == 2.0 and chain.held == 0


def test_control_after_the_next_observation_is_still_paired():
    chain = TransitionAssembler(max_held=2)
    chain.start(obs(1.0))
    assert chain.add_observation(obs(2.0)) == []  # held: the control for 1.0 is late
    out, _ = chain.add_action(1.0, act(1.0))
    assert steps_of(out) == [(1.0, 1.0, 2.0)]
    # two late controls arriving newest first
    assert chain.add_observation(obs(3.0)) == [] and chain.add_observation(obs(4.0)) == []
    out, _ = chain.add_action(3.0, act(3.0))
    assert out == []  # 2.0's action is still missing: nothing may jump the chain
    out, _ = chain.add_action(2.0, act(2.0))
    assert steps_of(out) == [(2.0, 2.0, 3.0), (3.0, 3.0, 4.0)]


def test_missing_action_restarts_after_max_held_never_pairs_another_stamp():
    chain = TransitionAssembler(max_held=1)
    chain.start(obs(1.0))
    chain.add_action(2.0, act(2.0))  # 1.0's control never comes
    assert chain.add_observation(obs(2.0)) == []
    out = chain.add_observation(obs(3.0))  # second observation held: give up on 1.0
    assert isinstance(out[0], Restart) and out[0].observation.stamp == 2.0 and out[0].reason == "missing_action"
    assert steps_of(out) == [(2.0, 2.0, 3.0)]


def test_lost_action_restarts_at_once():
    chain = TransitionAssembler(max_held=5)
    chain.start(obs(1.0))
    chain.action_lost(1.0)
    out = chain.add_observation(obs(2.0))
    assert [type(o) for o in out] == [Restart] and out[0].observation.stamp == 2.0
    assert out[0].reason == "missing_action"


def test_a_lost_stamp_that_becomes_current_restarts_at_once():
    """Declared lost while an earlier step was still open: when the chain reaches it, it does not wait."""
    chain = TransitionAssembler(max_held=5)
    chain.start(obs(1.0))
    chain.action_lost(2.0)  # the control for 2.0 was invalid, before 2.0 is the current observation
    chain.add_action(1.0, act(1.0))
    assert steps_of(chain.add_observation(obs(2.0))) == [(1.0, 1.0, 2.0)]
    out = chain.add_observation(obs(3.0))
    assert [type(o) for o in out] == [Restart] and out[0].observation.stamp == 3.0


def test_an_invalid_duplicate_does_not_lose_the_valid_action():
    chain = TransitionAssembler()
    chain.start(obs(1.0))
    chain.add_action(1.0, act(1.0))
    chain.action_lost(1.0)  # a second, invalid control with the same stamp
    assert steps_of(chain.add_observation(obs(2.0))) == [(1.0, 1.0, 2.0)]
    assert TransitionAssembler().held == 0


def test_duplicate_and_stale_controls():
    chain = TransitionAssembler()
    chain.start(obs(1.0))
    assert chain.add_action(1.0, act(1.0))[1] == ""
    assert chain.add_action(1.0, act(9.0))[1] == "duplicate_control"
    chain.add_observation(obs(2.0))
    assert chain.add_action(1.0, act(1.0)) == ([], "")  # before the chain: ignored, not an error
    chain.stop()
    assert chain.add_action(2.0, act(2.0)) == ([], "") and chain.add_observation(obs(3.0)) == []


def test_world_ready_holds_the_step_until_its_pose_arrives():
    poses: set[float] = {1.0}
    chain = TransitionAssembler(max_held=2, world_ready=lambda t: t in poses)
    chain.start(obs(1.0))
    chain.add_action(1.0, act(1.0))
    assert chain.add_observation(obs(2.0)) == []  # the pose stamped 2.0 is not there yet
    poses.add(2.0)
    assert steps_of(chain.poll()) == [(1.0, 1.0, 2.0)]
    # a pose that never comes cannot stall training: max_held bounds the wait
    chain.add_action(2.0, act(2.0))
    assert chain.add_observation(obs(3.0)) == [] and chain.add_observation(obs(4.0)) == []
    assert steps_of(chain.add_observation(obs(5.0))) == [(2.0, 2.0, 3.0)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 30), delays=st.lists(st.integers(0, 2), min_size=30, max_size=30),
       lost=st.sets(st.integers(0, 29), max_size=4), max_held=st.integers(1, 3), data=st.data())
def test_any_bounded_reordering_gives_the_in_order_chain(n, delays, lost, max_held, data):
    """Controls delayed by up to max_held observations give exactly the in-order transitions;
    lost ones give restarts; a step never pairs an observation with another stamp's action."""
    events = []  # (arrival time, kind, stamp)
    for i in range(n):
        events.append((2 * i, "obs", float(i)))
        if i not in lost:
            events.append((2 * i + 1 + 2 * min(delays[i], max_held), "act", float(i)))
    events.sort(key=lambda e: (e[0], e[1] == "act"))
    chain = TransitionAssembler(max_held=max_held)
    chain.start(obs(0.0))
    got = []
    for _, kind, t in events[1:]:
        got += chain.add_observation(obs(t)) if kind == "obs" else chain.add_action(t, act(t))[0]
    got += chain.poll()
    for o in got:
        if isinstance(o, Step):
            assert o.action[0] == o.observation.stamp and o.next.stamp == o.observation.stamp + 1
    # a lost action is given up on once max_held observations wait behind it, i.e. when
    # observation j + 1 + max_held arrives; the chain is stuck at the first one that is not
    given_up = [j for j in sorted(lost) if j + 1 + max_held <= n - 1]
    stuck = min([j for j in lost if j not in given_up], default=n)
    expected = [(float(i), float(i), float(i + 1)) for i in range(min(n - 1, stuck)) if i not in lost]
    assert steps_of(got) == expected
    assert [o.observation.stamp for o in got if isinstance(o, Restart)] == [float(j + 1) for j in given_up
                                                                              if j < stuck]


def test_an_action_that_beats_its_episode_start_is_kept():
    chain = TransitionAssembler()
    chain.add_action(0.5, act(0.5))  # the previous episode's, after its end
    chain.add_action(1.0, act(1.0))  # the new episode's first control, before its observation
    assert chain.start(obs(1.0)) == []
    assert steps_of(chain.add_observation(obs(2.0))) == [(1.0, 1.0, 2.0)]


def test_lost_and_stored_stamps_stay_bounded():
    chain = TransitionAssembler(max_actions=8)
    for i in range(100):  # garbage far-future stamps, between episodes and during one
        chain.action_lost(1000.0 + i)
        chain.add_action(2000.0 + i, act(1.0))
    # between episodes the newest actions are kept (the next episode's first is among them);
    # lost stamps always drop the farthest (forgetting one only means waiting max_held for it)
    assert sorted(chain._lost) == [1000.0 + i for i in range(8)]
    assert sorted(chain._actions) == [2000.0 + i for i in range(92, 100)]
    chain.start(obs(1.0))
    for i in range(100):
        chain.action_lost(3000.0 + i)
        chain.add_action(4000.0 + i, act(1.0))
    # in a chain the stamps nearest it are kept: the far-future ones are what goes
    assert sorted(chain._lost) == [1000.0 + i for i in range(8)]
    assert sorted(chain._actions) == [2000.0 + i for i in range(92, 100)]
    chain.add_action(1.5, act(1.5))  # a near one still gets in, evicting the farthest
    assert sorted(chain._actions) == [1.5] + [2000.0 + i for i in range(92, 99)]


def test_a_lost_observation_restarts_the_chain_instead_of_a_two_tick_step():
    """Observation 3.0 never arrives: 2.0 -> 4.0 is no transition (its reward would span two ticks)."""
    chain = TransitionAssembler(max_gap=1.5)
    chain.start(obs(1.0))
    chain.add_action(1.0, act(1.0))
    assert steps_of(chain.add_observation(obs(2.0))) == [(1.0, 1.0, 2.0)]
    chain.add_action(2.0, act(2.0))
    out = chain.add_observation(obs(4.0))
    assert steps_of(out) == [] and [(r.observation.stamp, r.reason) for r in out] == [(4.0, "lost_observation")]
    chain.add_action(4.0, act(4.0))
    assert steps_of(chain.add_observation(obs(5.0))) == [(4.0, 4.0, 5.0)]
    # without a limit the same arrivals make the two-tick step
    unlimited = TransitionAssembler()
    unlimited.start(obs(2.0))
    unlimited.add_action(2.0, act(2.0))
    assert steps_of(unlimited.add_observation(obs(4.0))) == [(2.0, 2.0, 4.0)]

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from td3_drive.rl.learner import Learner, LearnerConfig
from td3_drive.rl.scalars import ScalarLogger, is_actor_metric
from td3_drive.rl.synthetic import random_batch


def steps_of(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


def test_actor_metrics_are_logged_on_actor_update_steps(tmp_path):
    """policy_freq 2 and an odd log interval: the failed system never logged its actor loss."""
    learner = Learner(LearnerConfig(encoder_mode="shared", policy_freq=2), seed=0)
    logger = ScalarLogger(tmp_path, log_interval=3)
    batch = random_batch(4, "cpu")
    for _ in range(13):
        metrics = learner.update(batch)
        logger.log_update(learner.num_updates, metrics)
    logger.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    critic_steps = steps_of(events, "train/critic_loss")
    actor_steps = steps_of(events, "train/actor_loss")
    assert critic_steps == [1, 3, 6, 9, 12]  # the first update, then every log point
    # each log point's actor values come from the first actor update at or after it
    assert actor_steps == [2, 4, 6, 10, 12]
    assert all(step % 2 == 0 for step in actor_steps)
    assert steps_of(events, "features/actor/l2_norm") == actor_steps
    assert steps_of(events, "features/critic/l2_norm") == critic_steps


def test_actor_metric_grouping():
    assert is_actor_metric("train/actor_loss") and is_actor_metric("features/actor/l2_norm")
    assert is_actor_metric("grad/actor_norm_before_clip") and is_actor_metric("q/actor_q")
    assert not is_actor_metric("train/critic_loss") and not is_actor_metric("features/critic/mean")

import copy

import pytest
import torch

from td3_drive.rl.learner import SATURATED, Learner, LearnerConfig, random_shift, smoothed_target_action, td3_target
from td3_drive.rl.models import ActorHead, Trunk


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_td3_target_hand_computed():
    reward = torch.tensor([[1.0], [0.5], [-1.0]])
    discount = torch.tensor([[0.99], [0.0], [0.99 ** 3]])  # terminated in row 2; 3-step in row 3
    q1 = torch.tensor([[2.0], [3.0], [-4.0]])
    q2 = torch.tensor([[1.5], [4.0], [-2.0]])
    y = td3_target(reward, discount, [q1, q2])
    expected = torch.tensor([[1.0 + 0.99 * 1.5], [0.5], [-1.0 + 0.99 ** 3 * -4.0]])
    assert torch.allclose(y, expected)
    # DDPG: a single critic, no min
    assert torch.allclose(td3_target(reward, discount, [q2]), reward + discount * q2)


def test_target_policy_smoothing_hand_computed():
    pi = torch.tensor([[0.9, -0.2], [-0.95, 0.0]])
    noise = torch.tensor([[0.7, -0.1], [-0.3, 0.5]])
    out = smoothed_target_action(pi, noise, noise_clip=0.5)
    assert torch.allclose(out, torch.tensor([[1.0, -0.3], [-1.0, 0.5]]))
    # the noise is clipped on both sides before the action is
    pi, noise = torch.zeros(1, 2), torch.tensor([[-3.0, 3.0]])
    assert torch.equal(smoothed_target_action(pi, noise, noise_clip=0.5), torch.tensor([[-0.5, 0.5]]))


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_critic_target_matches_formula(mode, small_batch):
    learner = Learner(LearnerConfig(encoder_mode=mode), seed=0)
    # targets that differ from the online networks: a target computed on the online nets must fail
    with torch.no_grad():
        for target in learner.target_modules():
            for p in target.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    b = small_batch
    generator = copy.deepcopy(learner.generator)
    y = learner.critic_target(b.next_obs, b.next_state, b.reward, b.discount)
    with torch.no_grad():
        if mode == "separate":
            fa, fc = learner.actor_encoder_target(b.next_obs), learner.critic_encoder_target(b.next_obs)
        else:
            fa = fc = learner.critic_encoder(b.next_obs)
        pi = learner.actor_head_target(fa, b.next_state)
        eps = (torch.randn(pi.shape, generator=generator) * 0.2).clamp(-0.5, 0.5)
        a = (pi + eps).clamp(-1, 1)
        q1, q2 = learner.critic_heads_target(fc, b.next_state, a)
        expected = b.reward + b.discount * torch.minimum(q1, q2)
    assert torch.allclose(y, expected, atol=1e-6)


@pytest.mark.parametrize("algo,policy_freq", [("td3", 2), ("td3", 3), ("ddpg", 1)])
def test_policy_delay(algo, policy_freq, small_batch):
    learner = Learner(LearnerConfig(algo=algo, policy_freq=policy_freq, encoder_mode="shared"), seed=0)
    for update in range(1, 7):
        actor_before, target_before = params(learner.actor_head), params(learner.actor_head_target)
        critic_before = params(learner.critic_heads)
        metrics = learner.update(small_batch)
        actor_step = update % learner.config.policy_freq == 0
        assert not same(critic_before, params(learner.critic_heads))  # the critic learns every update
        assert same(actor_before, params(learner.actor_head)) != actor_step
        assert same(target_before, params(learner.actor_head_target)) != actor_step  # targets move with the actor
        assert ("train/actor_loss" in metrics) == actor_step
    assert learner.num_actor_updates == 6 // learner.config.policy_freq


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_one_polyak_step_moves_targets_tau_of_the_way(mode, small_batch):
    tau = 0.1
    learner = Learner(LearnerConfig(encoder_mode=mode, policy_freq=1, tau=tau), seed=0)
    with torch.no_grad():
        for target in learner.target_modules():
            for p in target.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    targets_before = {name: params(m) for name, m in learner.modules().items() if name.endswith("_target")}
    learner.update(small_batch)
    for name, before in targets_before.items():
        online = params(learner.modules()[name[: -len("_target")]])  # after this update's steps
        after = params(learner.modules()[name])
        for t0, o, t1 in zip(before, online, after):
            assert torch.allclose(t1, (1 - tau) * t0 + tau * o, atol=1e-6), name


def test_ddpg_is_a_configuration():
    cfg = LearnerConfig(algo="ddpg", policy_freq=5, policy_noise=0.3)
    assert (cfg.num_q, cfg.policy_freq, cfg.policy_noise) == (1, 1, 0.0)
    assert len(Learner(cfg).critic_heads.qs) == 1
    with pytest.raises(ValueError):
        LearnerConfig(algo="sac")
    with pytest.raises(ValueError):
        LearnerConfig(encoder_mode="both")


def test_actor_objective_uses_the_critics_own_encoder(small_batch):
    """Regression test for the failed system: Q1 must see critic-encoder features, never actor-encoder ones."""
    learner = Learner(LearnerConfig(encoder_mode="separate", policy_freq=1), seed=0)
    seen: dict[str, torch.Tensor] = {}
    learner.critic_encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("critic", o.detach().clone()))
    learner.actor_encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("actor", o.detach().clone()))
    q1 = learner.critic_heads.q1

    def spy(features, state, action):
        seen["q1_features"] = features.detach().clone()
        seen["q1_action_requires_grad"] = action.requires_grad
        return q1(features, state, action)

    learner.critic_heads.q1 = spy
    metrics = learner.update(small_batch)
    assert "train/actor_loss" in metrics
    assert torch.equal(seen["q1_features"], seen["critic"])
    assert not torch.allclose(seen["q1_features"], seen["actor"])
    assert seen["q1_action_requires_grad"]  # the gradient flows into the actor through the action


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_actor_loss_never_updates_the_critic(mode):
    learner = Learner(LearnerConfig(encoder_mode=mode))
    actor_params = {id(p) for g in learner.actor_optimizer.param_groups for p in g["params"]}
    critic_params = {id(p) for g in learner.critic_optimizer.param_groups for p in g["params"]}
    assert not actor_params & critic_params
    assert {id(p) for p in learner.actor_head.parameters()} <= actor_params
    lrs = {g["name"]: g["lr"] for g in learner.actor_optimizer.param_groups + learner.critic_optimizer.param_groups}
    assert lrs["critic_cnn"] == 1e-4 and lrs["critic_mlp"] == 3e-4 and lrs["actor_mlp"] == 3e-4
    if mode == "separate":
        assert lrs["actor_cnn"] == 1e-4
    else:  # DrQ-v2: the encoder learns from the critic only
        assert "actor_cnn" not in lrs and learner.actor_encoder is learner.critic_encoder


def test_shared_mode_actor_step_leaves_encoder_alone(small_batch):
    learner = Learner(LearnerConfig(encoder_mode="shared", policy_freq=1, lr_cnn=0.0), seed=0)
    before = params(learner.critic_encoder)
    learner.update(small_batch)  # critic step with lr 0 for the CNN, then an actor step
    assert same(before, params(learner.critic_encoder))


def test_non_finite_batch_is_skipped_and_counted(small_batch):
    learner = Learner(LearnerConfig(encoder_mode="shared"), seed=0)
    before = params(learner.critic_heads) + params(learner.critic_encoder)
    small_batch.reward[0] = float("nan")
    metrics = learner.update(small_batch)
    assert same(before, params(learner.critic_heads) + params(learner.critic_encoder))
    assert learner.health.skipped == {"critic_nonfinite_loss_or_features": 1}
    assert metrics["health/skipped_updates"] == 1
    assert learner.health.consecutive_bad == 1


def test_non_finite_gradients_are_skipped(small_batch):
    learner = Learner(LearnerConfig(encoder_mode="shared"), seed=0)
    learner.critic_heads.qs[0][0].weight.register_hook(lambda g: g * float("inf"))
    before = params(learner.critic_heads)
    learner.update(small_batch)
    assert same(before, params(learner.critic_heads))
    assert learner.health.skipped == {"critic_nonfinite_grad": 1}


def test_poisoned_weights_are_never_exported():
    from td3_drive.rl.weights import WeightsRejected, encode_actor

    learner = Learner()
    assert learner.parameters_finite()
    with torch.no_grad():
        learner.actor_head.net[0].weight[0, 0] = float("inf")
    assert not learner.parameters_finite()
    with torch.no_grad():
        learner.actor_head.net[0].weight[0, 0] = 0.0
    assert not learner.parameters_finite()  # once poisoned, stays poisoned until a rollback
    with pytest.raises(WeightsRejected):
        bad = Learner()
        with torch.no_grad():
            bad.actor_head.net[0].bias[0] = float("nan")
        encode_actor(bad.actor(), 1, bad.config.actor_architecture())


def test_gradient_clipping_is_logged(small_batch):
    learner = Learner(LearnerConfig(max_grad_norm_critic=1e-6, max_grad_norm_actor=None, policy_freq=1), seed=0)
    clipped_norms: list[float] = []
    step = learner.critic_optimizer.step

    def measuring_step(*args, **kwargs):  # the gradient the optimizer actually applies
        grads = [p.grad for p in learner._critic_params if p.grad is not None]
        clipped_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(*args, **kwargs)

    learner.critic_optimizer.step = measuring_step
    m = learner.update(small_batch)
    assert clipped_norms and clipped_norms[0] == pytest.approx(1e-6, rel=1e-3), "clipping must act on p.grad"
    assert m["grad/critic_norm_before_clip"] > 1e-6 and m["grad/critic_norm_after_clip"] == pytest.approx(1e-6)
    assert m["grad/actor_norm_after_clip"] == m["grad/actor_norm_before_clip"]
    assert 0 < m["features/critic/l2_norm"] < 100 and 0 < m["features/actor/l2_norm"] < 100


def test_random_shift_is_a_shifted_crop():
    g = torch.Generator().manual_seed(0)
    obs = torch.arange(84, dtype=torch.uint8).repeat(2, 1, 84, 1)  # pixel value = column
    out = random_shift(obs, 4, g)
    assert out.shape == obs.shape and out.dtype == torch.uint8
    for n in range(2):
        shift = int(out[n, 0, 42, 42]) - 42  # interior columns move by one constant offset
        assert -4 <= shift <= 4
        assert torch.equal(out[n, 0, 10, 10:74], obs[n, 0, 10, 10 + shift:74 + shift])


def _drive_actor_with_a_tiny_constant_dq_da(action_penalty: float, updates: int = 1500) -> float:
    """Adam on -Q with Q = 0.01 * sum(a): the tiny, same-signed early dQ/da of a fresh critic."""
    torch.manual_seed(0)
    head = ActorHead(16, 4, 2, (32, 32), trunk_dim=8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-4)
    features, state = torch.randn(64, 16), torch.randn(64, 4)
    for _ in range(updates):
        pre_tanh = head.pre_tanh(features, state)
        loss = -(0.01 * torch.tanh(pre_tanh)).sum(1).mean() + action_penalty * pre_tanh.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((head(features, state).abs() > SATURATED).float().mean())


def test_pre_tanh_penalty_keeps_the_actor_out_of_saturation():
    assert _drive_actor_with_a_tiny_constant_dq_da(0.0) > 0.9, "without it Adam pins tanh at the bound"
    assert _drive_actor_with_a_tiny_constant_dq_da(LearnerConfig.action_penalty) == 0.0


def test_saturated_share_is_logged_on_actor_updates(small_batch):
    learner = Learner(LearnerConfig(encoder_mode="shared", policy_freq=1))
    metrics = learner.update(small_batch)
    assert 0.0 <= metrics["train/action_saturated_fraction"] <= 1.0
    # a fresh actor starts near a = 0 (small final-layer init): nothing saturated
    assert metrics["train/action_saturated_fraction"] == 0.0


def test_trunk_bounds_what_the_heads_see():
    trunk = Trunk(512, 50)
    out = trunk(torch.randn(8, 512) * 1e6)
    assert out.shape == (8, 50) and out.abs().max() <= 1.0
    learner = Learner(LearnerConfig(encoder_mode="shared"))
    assert isinstance(learner.actor_head.trunk, Trunk) and isinstance(learner.critic_heads.trunk, Trunk)
    no_trunk = Learner(LearnerConfig(encoder_mode="shared", trunk_dim=0))
    assert isinstance(no_trunk.actor_head.trunk, torch.nn.Identity)
    assert no_trunk.actor_head.net[0].in_features == 512 + 53


@pytest.mark.parametrize("precision, expected", [("fp32", False), ("bf16", True)])
def test_precision_runs_the_update_in_bf16_autocast(precision, expected, small_batch):
    learner = Learner(LearnerConfig(encoder_mode="shared", precision=precision))
    assert learner.bf16 is expected
    before = [p.detach().clone() for p in learner.critic_heads.parameters()]
    dtypes: list[torch.dtype] = []
    learner.critic_heads.qs[0][0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    metrics = learner.update(small_batch)
    assert set(dtypes) == {torch.bfloat16 if expected else torch.float32}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in learner.critic_heads.parameters())  # weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.critic_heads.parameters()))
    with pytest.raises(ValueError):
        LearnerConfig(precision="fp8")


def test_health_counts_consecutive_bad_updates_and_a_good_one_resets_them(small_batch):
    from td3_drive.rl.synthetic import random_batch

    learner = Learner(LearnerConfig(encoder_mode="shared"), seed=0)
    small_batch.reward[0] = float("nan")
    learner.update(small_batch)
    learner.update(small_batch)
    assert learner.health.skipped == {"critic_nonfinite_loss_or_features": 2}
    assert learner.health.consecutive_bad == 2 and learner.health.total_skipped == 2
    learner.update(random_batch(8, "cpu", seed=2))
    assert learner.health.consecutive_bad == 0 and learner.health.total_skipped == 2


def test_actor_clipping_acts_on_the_actor_gradient(small_batch):
    learner = Learner(LearnerConfig(max_grad_norm_critic=None, max_grad_norm_actor=1e-6, policy_freq=1), seed=0)
    m = learner.update(small_batch)
    assert m["grad/actor_norm_before_clip"] > 1e-6
    assert m["grad/actor_norm_after_clip"] == pytest.approx(1e-6, rel=1e-3)  # clip_grad_norm_ adds 1e-6 to the norm
    assert m["grad/critic_norm_after_clip"] == m["grad/critic_norm_before_clip"]


def test_action_penalty_pulls_the_pre_tanh_action_towards_zero(small_batch):
    """With a flat critic (Q constant) the actor loss is the penalty alone: one step shrinks |pre-tanh|
    on both sides of zero, and more with a larger weight."""
    def shrink(action_penalty: float) -> float:
        learner = Learner(LearnerConfig(encoder_mode="shared", policy_freq=1, action_penalty=action_penalty,
                                        lr_mlp=1e-2), seed=0)
        with torch.no_grad():
            for q in learner.critic_heads.qs:
                q[-1].weight.zero_()
            learner.actor_head.net[-1].bias.copy_(torch.tensor([2.0, -2.0]))  # both signs
        features = learner.critic_encoder(small_batch.obs).detach()

        def pre_tanh() -> torch.Tensor:
            return learner.actor_head.pre_tanh(features, small_batch.state).detach()

        before = pre_tanh()
        learner.update(small_batch)
        after = pre_tanh()
        assert ((after.abs() < before.abs()) | (before.abs() < 1e-3)).float().mean() > 0.95
        return float((before.abs() - after.abs()).mean())

    assert shrink(1.0) > shrink(0.01) > 0


def test_augmentation_shifts_both_observations_of_the_update(small_batch, monkeypatch):
    from td3_drive.rl import learner as learner_module

    seen: list[torch.Tensor] = []

    def recording_shift(obs, pad, generator):
        seen.append(obs)
        out = random_shift(obs, pad, generator)
        seen.append(out)
        return out

    monkeypatch.setattr(learner_module, "random_shift", recording_shift)
    learner = Learner(LearnerConfig(encoder_mode="shared", augment=True, augment_pad=2), seed=0)
    metrics = learner.update(small_batch)
    assert len(seen) == 4 and torch.equal(seen[0], small_batch.obs) and torch.equal(seen[2], small_batch.next_obs)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_random_shift_covers_every_offset_reproducibly():
    obs = torch.arange(84, dtype=torch.uint8).repeat(512, 1, 84, 1)  # pixel value = column
    shifts = random_shift(obs, 4, torch.Generator().manual_seed(3))[:, 0, 42, 42].long() - 42
    assert set(shifts.tolist()) == set(range(-4, 5)), "offsets 0..2*pad of the padded image, each reachable"
    again = random_shift(obs, 4, torch.Generator().manual_seed(3))[:, 0, 42, 42].long() - 42
    assert torch.equal(shifts, again)
    # replicate padding: the edge column repeats (zero padding would bring in 0)
    edge = random_shift(obs[:64] + 10, 4, torch.Generator().manual_seed(0))
    assert int(edge.min()) == 10 and int(edge.max()) == 93


def test_actor_architecture_builds_the_learners_actor():
    from td3_drive.rl.models import build_actor

    learner = Learner(LearnerConfig(encoder_mode="shared", trunk_dim=24, hidden=(64,), layer_norm=False))
    architecture = learner.config.actor_architecture()
    assert (architecture.trunk_dim, architecture.hidden, architecture.layer_norm) == (24, (64,), False)
    built = build_actor(architecture)
    exported = learner.actor()
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in exported.state_dict().items()}
    built.load_state_dict(exported.state_dict())
    obs, state = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8), torch.randn(3, 53)
    with torch.no_grad():
        assert torch.equal(built(obs, state), exported(obs, state))
        assert torch.equal(exported(obs, state), learner.act(obs, state))


def test_update_metrics_have_the_logged_names(small_batch):
    learner = Learner(LearnerConfig(encoder_mode="shared", policy_freq=1), seed=0)
    metrics = learner.update(small_batch)
    assert {"train/critic_loss", "q/q1", "q/target", "train/actor_loss", "q/actor_q", "train/action_abs_mean",
            "train/action_saturated_fraction"} <= set(metrics)


def test_config_round_trips_and_refuses_unknown_keys():
    config = LearnerConfig(algo="td3", hidden=(64, 32), tau=0.01, precision="bf16")
    values = config.to_dict()
    assert values["hidden"] == [64, 32] and values["tau"] == 0.01
    assert LearnerConfig.from_dict(values) == config
    with pytest.raises(ValueError, match="taux"):
        LearnerConfig.from_dict({**values, "taux": 0.1})
    ddpg = LearnerConfig.from_dict({"algo": "ddpg"})
    assert (ddpg.num_q, ddpg.policy_noise, ddpg.noise_clip, ddpg.policy_freq) == (1, 0.0, 0.0, 1)


def test_auto_precision_follows_the_hardware():
    from td3_drive.rl.learner import native_bf16

    cpu_native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert native_bf16(torch.device("cpu")) is cpu_native
    assert native_bf16(torch.device("meta")) is False
    assert Learner(LearnerConfig(encoder_mode="shared", precision="auto")).bf16 is cpu_native
    learner = Learner(LearnerConfig(encoder_mode="shared"))
    assert learner.optimizers() == {"critic": learner.critic_optimizer, "actor": learner.actor_optimizer}


def test_the_actor_step_climbs_the_critic(small_batch):
    """One actor update raises Q1 of the policy's actions under the critic it was taken against."""
    learner = Learner(LearnerConfig(encoder_mode="shared", policy_freq=1, action_penalty=0.0, lr_mlp=1e-3), seed=0)
    old_actor = copy.deepcopy(learner.actor_head)
    learner.update(small_batch)
    with torch.no_grad():
        features = learner.critic_encoder(small_batch.obs)

        def q(head) -> float:
            return float(learner.critic_heads.q1(features, small_batch.state, head(features, small_batch.state)).mean())

        assert q(learner.actor_head) > q(old_actor)


@pytest.mark.parametrize("field,value,valid", [
    ("tau", 1.0, True), ("tau", 0.0, False), ("tau", 1.5, False),
    ("gamma", 0.0, True), ("gamma", 1.0, True), ("gamma", -0.1, False), ("gamma", 1.1, False),
    ("policy_freq", 0, False), ("num_q", 0, False), ("algo", "sac", False), ("encoder_mode", "x", False),
])
def test_config_validation_edges(field, value, valid):
    if valid:
        assert getattr(LearnerConfig(**{field: value}), field) == value
    else:
        with pytest.raises(ValueError, match=field):
            LearnerConfig(**{field: value})


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_targets_are_frozen_independent_copies_and_named(mode):
    learner = Learner(LearnerConfig(encoder_mode=mode))
    names = {"critic_encoder", "critic_heads", "actor_head", "critic_heads_target", "actor_head_target"}
    if mode == "separate":
        names |= {"actor_encoder", "critic_encoder_target", "actor_encoder_target"}
    assert set(learner.modules()) == names
    targets = learner.target_modules()
    assert len(targets) == (4 if mode == "separate" else 2)
    assert all(not p.requires_grad for t in targets for p in t.parameters())
    online = dict(learner.modules())
    for name in [n for n in names if n.endswith("_target")]:
        target, source = online[name], online[name[:-len("_target")]]
        with torch.no_grad():
            next(source.parameters()).add_(1.0)
        assert not torch.equal(next(target.parameters()), next(source.parameters())), name
    assert any(isinstance(m, torch.nn.LayerNorm) for m in learner.critic_encoder.modules())
    groups = [g["name"] for g in learner.actor_optimizer.param_groups]  # optimizer state is restored by position
    assert groups == (["actor_cnn", "actor_mlp"] if mode == "separate" else ["actor_mlp"])
    assert same(params(Learner(LearnerConfig(encoder_mode=mode)).critic_heads), params(
        Learner(LearnerConfig(encoder_mode=mode), seed=0).critic_heads)), "seed 0 is the default"


def test_augmentation_is_reproducible_from_the_learners_seed(small_batch):
    a = Learner(LearnerConfig(encoder_mode="shared", augment=True), seed=3)
    b = Learner(LearnerConfig(encoder_mode="shared", augment=True), seed=3)
    a.update(small_batch)
    b.update(small_batch)
    assert same(params(a.critic_encoder), params(b.critic_encoder))


def test_cuda_bf16_support_is_asked_of_cuda(monkeypatch):
    from td3_drive.rl.learner import native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert native_bf16(torch.device("cuda")) is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert native_bf16(torch.device("cuda")) is False

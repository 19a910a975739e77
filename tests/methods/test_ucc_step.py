"""UCC's training step (raysemi.methods.ucc) in plain torch: which view feeds which head, where the
pseudo labels come from, what copy-paste variants do, and that the DCSCP state survives a checkpoint.

A toy cross-head model makes the wiring checkable by hand: head m's logits are the first C input
channels times a per-head factor, so every loss can be recomputed from the inputs directly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysemi.config import ConfigError, UCCConfig, load_config
from raysemi.methods.ema import EMALabeler
from raysemi.methods.losses import CrossEntropy
from raysemi.methods.losses import ramped
from raysemi.methods.ucc import UCCStep, dropout_off
from raysemi.methods.ugrm import cross_supervision_loss

C = 3


class ToyCrossHead(nn.Module):
    """forward(x, rows) -> (a1 * x[rows1, :C], a2 * x[rows2, :C]), the CrossHeadModel contract."""

    def __init__(self, a1: float = 1.0, a2: float = 2.0):
        super().__init__()
        self.a1 = nn.Parameter(torch.tensor(a1))
        self.a2 = nn.Parameter(torch.tensor(a2))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, rows=None):
        self.inputs.append(x)
        r1, r2 = rows if rows is not None else (slice(None), slice(None))
        return self.a1 * x[r1, :C], self.a2 * x[r2, :C]


def batches(seed=0, n_l=2, n_u=2, size=4):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n_l, C, size, size, generator=g)
    mask = torch.randint(0, C, (n_l, size, size), generator=g)
    u = {"weak": torch.randn(n_u, C, size, size, generator=g),
         "strong1": torch.randn(n_u, C, size, size, generator=g),
         "strong2": torch.randn(n_u, C, size, size, generator=g),
         "ignore": torch.zeros(n_u, size, size, dtype=torch.bool)}
    u["ignore"][:, -1, :] = True  # the bottom row is padding
    return image, mask, u


def step(**settings) -> UCCStep:
    return UCCStep(UCCConfig(**{"copy_paste": "none", **settings}), C, CrossEntropy())


def test_weak_to_strong_each_head_sees_its_own_strong_view():
    image, mask, u = batches()
    model = ToyCrossHead()
    loss, loss_u, _ = step(lam=2.0)(model, image, mask, u)
    ce = F.cross_entropy
    loss_s = ce(1.0 * image, mask) + ce(2.0 * image, mask)
    # targets from the weak view (both heads), predictions: head 1 on strong 1, head 2 on strong 2
    want_u, _ = cross_supervision_loss(1.0 * u["strong1"], 2.0 * u["strong2"], (1.0 * u["weak"]).softmax(1),
                                       (2.0 * u["weak"]).softmax(1), ignore_mask=u["ignore"])
    assert loss_u.item() == pytest.approx(want_u.item(), rel=1e-6)
    assert loss.item() == pytest.approx((loss_s + 2.0 * want_u).item(), rel=1e-6)
    swapped, _ = cross_supervision_loss(1.0 * u["strong2"], 2.0 * u["strong1"], (1.0 * u["weak"]).softmax(1),
                                        (2.0 * u["weak"]).softmax(1), ignore_mask=u["ignore"])
    assert abs(swapped.item() - want_u.item()) > 1e-3, "the test must tell the views apart"
    # the weak forward gave targets only (no grad); then the labeled batch, then [strong 1, strong 2]
    assert [x.shape[0] for x in model.inputs] == [2, 2, 4]
    assert torch.equal(model.inputs[2], torch.cat([u["strong1"], u["strong2"]]))
    loss.backward()
    assert model.a1.grad is not None and model.a2.grad is not None


def test_class_balance_weighs_the_cross_supervision_by_its_targets_class():
    """ucc.class_balance: the step hands its class weights to the cross-supervision loss; weights
    without the key, or the key without weights, are refused."""
    image, mask, u = batches(5)
    weights = [3.0, 1.0, 0.25]
    balanced = UCCStep(UCCConfig(copy_paste="none", class_balance=0.5), C, CrossEntropy(), class_weights=weights)
    _, loss_u, _ = balanced(ToyCrossHead(), image, mask, u)
    want, _ = cross_supervision_loss(1.0 * u["strong1"], 2.0 * u["strong2"], (1.0 * u["weak"]).softmax(1),
                                     (2.0 * u["weak"]).softmax(1), ignore_mask=u["ignore"],
                                     class_weight=torch.tensor(weights))
    assert loss_u.item() == pytest.approx(want.item(), rel=1e-6)
    _, plain, _ = step()(ToyCrossHead(), image, mask, u)
    assert abs(plain.item() - want.item()) > 1e-3, "the weights must change the loss"
    with pytest.raises(ValueError, match="class_balance"):
        UCCStep(UCCConfig(class_balance=0.5), C, CrossEntropy())
    with pytest.raises(ValueError, match="class_balance"):
        UCCStep(UCCConfig(), C, CrossEntropy(), class_weights=weights)


def test_weak_only_takes_labels_and_predictions_from_one_weak_forward():
    image, mask, u = batches(1)
    model = ToyCrossHead()
    _, loss_u, _ = step(views="w", ugrm=False)(model, image, mask, u)
    w1, w2 = 1.0 * u["weak"], 2.0 * u["weak"]
    want, _ = cross_supervision_loss(w1, w2, w1.softmax(1), w2.softmax(1), ignore_mask=u["ignore"], ugrm=False)
    assert loss_u.item() == pytest.approx(want.item(), rel=1e-6)
    assert [x.shape[0] for x in model.inputs] == [2, 2], "labeled, then weak: no strong view, no extra forward"


def test_strong_only_labels_come_from_the_strong_views():
    image, mask, u = batches(2)
    model = ToyCrossHead()
    _, loss_u, _ = step(views="s")(model, image, mask, u)
    s1, s2 = 1.0 * u["strong1"], 2.0 * u["strong2"]
    want, _ = cross_supervision_loss(s1, s2, s1.softmax(1), s2.softmax(1), ignore_mask=u["ignore"])
    assert loss_u.item() == pytest.approx(want.item(), rel=1e-6)


def test_ugrm_reading_and_switch_reach_the_loss():
    image, mask, u = batches(3)
    values = {}
    for key, settings in {"text": {}, "equations": {"ugrm_reading": "equations"}, "off": {"ugrm": False}}.items():
        _, values[key], _ = step(**settings)(ToyCrossHead(), image, mask, u)
    assert len({round(v.item(), 6) for v in values.values()}) == 3


def test_pasted_pixels_reach_the_strong_views_with_their_ground_truth():
    # one labeled image, all class 1 except a 2x2 square of class 2; p_apply 1 pastes every time
    image, mask, u = batches(4, n_l=1, n_u=1)
    mask[:] = 1
    mask[0, :2, :2] = 2
    model = ToyCrossHead()
    ucc = UCCStep(UCCConfig(copy_paste="cscp", paste_p=1.0), C, CrossEntropy(), seed=0)
    ucc(model, image, mask, u)
    x = model.inputs[-1]  # [strong 1, strong 2]
    # whichever class was drawn, its pixels (by the labeled mask) now hold the labeled image on both views
    for cls in (1, 2):
        where = mask[0] == cls
        if torch.equal(x[0][:, where], image[0][:, where]):
            assert torch.equal(x[1][:, where], image[0][:, where])
            assert not torch.equal(x[0][:, ~where], image[0][:, ~where])
            break
    else:
        pytest.fail("no class of the labeled image was pasted onto the strong views")


def test_copy_paste_variants_paste_where_they_should_and_only_dynamic_ones_learn_confidence():
    image, mask, u = batches(5)
    for variant, cross_set, dynamic in (("cp", False, False), ("dcp", False, True), ("cscp", True, False),
                                        ("dcscp", True, True)):
        model = ToyCrossHead()
        ucc = UCCStep(UCCConfig(copy_paste=variant, paste_p=1.0), C, CrossEntropy())
        before = ucc.confidence.sigma.copy()
        ucc(model, image, mask, u)
        x = model.inputs[-1]
        strong_unchanged = torch.equal(x[0:2], u["strong1"]) and torch.equal(x[2:4], u["strong2"])
        assert strong_unchanged is (not cross_set), variant
        assert (not np.allclose(ucc.confidence.sigma, before)) is dynamic, variant


def test_the_dcscp_state_round_trips_through_a_checkpoint():
    image, mask, u = batches(6)
    a = UCCStep(UCCConfig(copy_paste="dcscp", paste_p=0.5), C, CrossEntropy(), seed=3)
    for _ in range(3):
        a(ToyCrossHead(), image, mask, u)
    b = UCCStep(UCCConfig(copy_paste="dcscp", paste_p=0.5), C, CrossEntropy(), seed=99)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.confidence.sigma, b.confidence.sigma)
    ma, mb = ToyCrossHead(), ToyCrossHead()
    la, _, _ = a(ma, image, mask, u)
    lb, _, _ = b(mb, image, mask, u)
    assert torch.equal(ma.inputs[-1], mb.inputs[-1]) and la.item() == lb.item(), "the same pastes after a resume"


class ToyDropoutCrossHead(nn.Module):
    """ToyCrossHead behind a BatchNorm (no affine) and a Dropout(0.5), as the ASPP head has one;
    records each forward's output, the dropout's and BatchNorm's modes, and the running mean."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(C, affine=False)
        self.drop = nn.Dropout(0.5)
        self.a1 = nn.Parameter(torch.tensor(1.0))
        self.a2 = nn.Parameter(torch.tensor(2.0))
        self.calls: list[dict] = []

    def forward(self, x, rows=None):
        h = self.drop(self.bn(x))
        r1, r2 = rows if rows is not None else (slice(None), slice(None))
        out = self.a1 * h[r1], self.a2 * h[r2]
        self.calls.append({"out": [o.detach() for o in out], "bn": self.bn.training, "drop": self.drop.training,
                           "running_mean": self.bn.running_mean.clone()})
        return out


def test_weak_targets_come_without_dropout_while_batchnorm_keeps_training():
    image, mask, u = batches(8)
    weak = []
    for _ in range(2):
        model = ToyDropoutCrossHead()
        step()(model, image, mask, u)
        first = model.calls[0]  # the weak forward
        assert (first["bn"], first["drop"]) == (True, False)
        assert all(c["bn"] and c["drop"] for c in model.calls[1:]), "the trained forwards keep dropout"
        # BatchNorm in train mode: normalised by the weak batch's own statistics, and its running mean
        # moved from 0 by momentum 0.1 towards that batch's mean
        mean = u["weak"].mean(dim=(0, 2, 3))
        var = u["weak"].var(dim=(0, 2, 3), unbiased=False)
        normalised = (u["weak"] - mean.view(1, C, 1, 1)) / torch.sqrt(var.view(1, C, 1, 1) + 1e-5)
        assert torch.allclose(first["out"][0], 1.0 * normalised, atol=1e-5)  # no unit zeroed, none doubled
        assert torch.allclose(first["out"][1], 2.0 * normalised, atol=1e-5)
        assert torch.allclose(first["running_mean"], 0.1 * mean, atol=1e-6)
        assert model.training and model.drop.training and model.bn.training  # modes restored
        weak.append(first["out"])
    assert all(torch.equal(a, b) for a, b in zip(*weak)), "deterministic: the same targets on two calls"


def test_dropout_off_restores_each_modules_mode_even_on_error():
    model = ToyDropoutCrossHead()
    other = nn.Dropout2d(0.2).eval()  # already off: stays off
    holder = nn.ModuleDict({"net": model, "other": other})
    with pytest.raises(RuntimeError, match="boom"):
        with dropout_off(holder):
            assert not model.drop.training and model.bn.training and holder.training
            raise RuntimeError("boom")
    assert model.drop.training and not other.training and model.bn.training and holder.training


def test_dropout_off_reaches_the_module_inside_ddp(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(ToyDropoutCrossHead())
        with dropout_off(ddp):
            assert not ddp.module.drop.training and ddp.module.bn.training
        assert ddp.module.drop.training
    finally:
        dist.destroy_process_group()


def test_bad_settings_are_named():
    """The step's settings are UCCConfig's: checked once, where the config is read, by key."""
    with pytest.raises(ConfigError, match="ucc.views"):
        load_config(None, ["ucc.views=sw"])
    with pytest.raises(ConfigError, match="ucc.copy_paste"):
        load_config(None, ["ucc.copy_paste=mix"])
    with pytest.raises(ConfigError, match="ucc.lam_warmup"):
        load_config(None, ["ucc.lam_warmup=1.0"])


def _rank_step(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    image, mask, u = batches(10 + rank)  # each rank its own labeled batch
    ucc = UCCStep(UCCConfig(copy_paste="dcscp", paste_p=0.0, confidence_momentum=0.5), C, CrossEntropy(),
                  rank=rank, world=2)
    ucc(ToyCrossHead(), image, mask, u)
    torch.save(ucc.confidence.sigma, f"{out}/sigma{rank}.pt")
    dist.destroy_process_group()


def test_ranks_keep_one_class_confidence_the_mean_over_all_their_pixels(tmp_path):
    """Under DDP each rank sees other labeled pixels; the all-reduce makes every rank's sigma the
    EMA of the mean over both ranks' pixels, so all ranks sample classes alike."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_step, args=(port, str(tmp_path)), nprocs=2)
    sigma0, sigma1 = (torch.load(tmp_path / f"sigma{r}.pt", weights_only=False) for r in (0, 1))
    np.testing.assert_array_equal(sigma0, sigma1)
    # the same update in one process over both ranks' labeled pixels (paste_p 0: nothing pasted)
    single = UCCStep(UCCConfig(copy_paste="dcscp", paste_p=0.0, confidence_momentum=0.5), C, CrossEntropy())
    (img0, mask0, _), (img1, mask1, _) = batches(10), batches(11)
    probs = torch.cat([(F.softmax(1.0 * img0, 1) + F.softmax(2.0 * img0, 1)) / 2,
                       (F.softmax(1.0 * img1, 1) + F.softmax(2.0 * img1, 1)) / 2])
    single.confidence.update(probs, torch.cat([mask0, mask1]))
    np.testing.assert_allclose(sigma0, single.confidence.sigma, rtol=1e-12)
    alone = UCCStep(UCCConfig(copy_paste="dcscp", paste_p=0.0, confidence_momentum=0.5), C, CrossEntropy())
    alone.confidence.update((F.softmax(1.0 * img0, 1) + F.softmax(2.0 * img0, 1)) / 2, mask0)
    assert not np.allclose(sigma0, alone.confidence.sigma), "rank 0 alone would have another sigma"


def test_lam_warms_up_along_a_sigmoid_then_stays():
    assert ramped(2.0, 0.5, 0.0) == pytest.approx(2.0 * np.exp(-5.0))
    assert ramped(2.0, 0.5, 0.25) == pytest.approx(2.0 * np.exp(-5.0 * 0.25))  # t = 0.5: exp(-5 * 0.5^2)
    assert ramped(2.0, 0.5, 0.5) == 2.0 and ramped(2.0, 0.5, 0.9) == 2.0
    assert ramped(2.0, 0.0, 0.0) == 2.0, "no warm-up: the paper's constant lam"
    image, mask, u = batches(7)
    early, _, _ = UCCStep(UCCConfig(copy_paste="none", lam_warmup=0.5), C, CrossEntropy())(
        ToyCrossHead(), image, mask, u, progress=0.0)
    late, loss_u, _ = UCCStep(UCCConfig(copy_paste="none", lam_warmup=0.5), C, CrossEntropy())(
        ToyCrossHead(), image, mask, u, progress=0.6)
    assert late.item() - early.item() == pytest.approx((2.0 - 2.0 * np.exp(-5.0)) * loss_u.item(), rel=1e-5)


def test_guidance_order_draws_u1_for_the_first_half_then_all_of_u_and_resumes_there():
    """RWMS-guided UCC's order: batches from U1 while fewer than half the run's steps were drawn, then from
    all of U; the count is the step's state, so a resumed run goes on from the late stream."""
    import itertools

    step = UCCStep(UCCConfig(copy_paste="none"), C, CrossEntropy())
    got = list(itertools.islice(step._in_order(iter("abcdef"), iter("UVWXYZ"), 3), 5))
    assert got == ["a", "b", "c", "U", "V"]
    state = step.state_dict()
    assert state["drawn"] == 5
    resumed = UCCStep(UCCConfig(copy_paste="none"), C, CrossEntropy())
    resumed.restore([state], rank=0)
    assert list(itertools.islice(resumed._in_order(iter("abc"), iter("UVW"), 3), 2)) == ["U", "V"]
    more_ranks = UCCStep(UCCConfig(copy_paste="none"), C, CrossEntropy())
    more_ranks.restore([state], rank=1)  # a rank the checkpoint did not have draws where the others are
    assert more_ranks.drawn == 5


def test_the_ema_labeler_averages_the_students_weights_from_a_copy_on():
    """theta_ema <- d theta_ema + (1 - d) theta with d = min(decay, 1 - 1/(n + 1)): a copy first, then the
    mean of all steps so far until d reaches the decay. By hand: 1, then (1 + 3) / 2 = 2, then d =
    min(0.6, 2/3) = 0.6: 0.6 * 2 + 0.4 * 5 = 3.2."""
    student, ema = ToyCrossHead(a1=1.0), EMALabeler(0.6)
    got = []
    for a1 in (1.0, 3.0, 5.0):
        student.a1.data.fill_(a1)
        got.append(ema.update(student).a1.item())
    assert got == pytest.approx([1.0, 2.0, 3.2])
    assert student.a1.item() == 5.0 and not ema.model.a1.requires_grad
    resumed = EMALabeler(0.6)
    resumed.load_state_dict(ema.state_dict())  # before its first update, as in a resumed run
    student.a1.data.fill_(7.0)
    assert resumed.update(student).a1.item() == pytest.approx(0.6 * 3.2 + 0.4 * 7.0)
    with pytest.raises(ValueError, match="decay"):
        EMALabeler(1.0)


def test_with_an_ema_labeler_the_weak_labels_come_from_the_average_and_resume_with_it():
    image, mask, u = batches(12)
    model = ToyCrossHead(a1=1.0, a2=2.0)
    ucc = step(ema_labeler=0.5)
    ucc(model, image, mask, u)  # the first update copies the model
    model.a1.data.fill_(9.0)
    model.a2.data.fill_(0.5)
    saved = ucc.state_dict()
    _, loss_u, _ = ucc(model, image, mask, u)
    # the average is now (1 + 9) / 2 = 5 and (2 + 0.5) / 2 = 1.25; the predictions are the model's own (9, 0.5)
    want, _ = cross_supervision_loss(9.0 * u["strong1"], 0.5 * u["strong2"], (5.0 * u["weak"]).softmax(1),
                                     (1.25 * u["weak"]).softmax(1), ignore_mask=u["ignore"])
    own, _ = cross_supervision_loss(9.0 * u["strong1"], 0.5 * u["strong2"], (9.0 * u["weak"]).softmax(1),
                                    (0.5 * u["weak"]).softmax(1), ignore_mask=u["ignore"])
    assert loss_u.item() == pytest.approx(want.item(), rel=1e-6) and abs(own.item() - want.item()) > 1e-3
    assert [x.shape[0] for x in model.inputs[-2:]] == [2, 4], "the labels' forward is the copy's, not the model's"
    resumed = step(ema_labeler=0.5)
    resumed.restore([saved], rank=1)  # a rank the checkpoint did not have takes rank 0's average
    _, again, _ = resumed(model, image, mask, u)
    assert again.item() == pytest.approx(want.item(), rel=1e-6)
    assert "ema" not in step().state_dict(), "without the lever the state is as before"


def test_the_ema_labeler_is_refused_where_it_would_not_label():
    with pytest.raises(ConfigError, match="ucc.ema_labeler"):
        load_config(None, ["ucc.ema_labeler=1.0"])
    with pytest.raises(ConfigError, match="ucc.ema_labeler.*views 'w'"):
        load_config(None, ["ucc.ema_labeler=0.99", "ucc.views=w"])

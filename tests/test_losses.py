"""Tests for PMM's pretended under-fitting loss (wsss_blocks.losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.losses import (
    PretendedUnderFittingLoss,
    pretended_underfitting_loss,
    pretended_underfitting_loss_detailed,
)


def _puf(*args, **kwargs):
    """(loss, active) of pretended_underfitting_loss_detailed; the loss equals pretended_underfitting_loss's."""
    out = pretended_underfitting_loss_detailed(*args, **kwargs)
    assert torch.equal(out.loss, pretended_underfitting_loss(*args, **kwargs))
    return out.loss, out.active


def _fitted_batch(wrong: int = 3, k_classes: int = 4, hw: int = 6, dtype=torch.float64):
    """Logits that fit the target confidently except ``wrong`` pixels that strongly disagree."""
    target = torch.randint(0, k_classes, (2, hw, hw))
    logits = F.one_hot(target, k_classes).permute(0, 3, 1, 2).to(dtype) * 6.0
    flat_t = target.view(-1)
    idx = torch.arange(wrong) * 7
    other = (flat_t[idx] + 1) % k_classes
    lg = logits.permute(0, 2, 3, 1).reshape(-1, k_classes)
    lg[idx] = 0.0
    lg[idx, other] = 6.0  # confidently wrong: CE ≈ 6
    logits = lg.view(2, hw, hw, k_classes).permute(0, 3, 1, 2).contiguous()
    return logits, target, idx


def test_puf_above_gate_equals_plain_ce():
    logits = torch.randn(2, 5, 4, 4) * 0.1  # untrained: mean CE ≈ log 5 > 0.5
    target = torch.randint(0, 5, (2, 4, 4))
    loss, active = _puf(logits, target)
    assert not bool(active)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_puf_below_gate_clamps_and_zeroes_gradients_exactly():
    logits, target, wrong = _fitted_batch()
    logits.requires_grad_(True)
    ce = F.cross_entropy(logits, target, reduction="none")
    assert ce.mean() < 0.5
    assert (ce.view(-1)[wrong] > 0.5).all()
    loss, active = _puf(logits, target)
    assert bool(active)
    expected = ce.clamp(max=0.5).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    g = logits.grad.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    assert (g[wrong] == 0).all()  # exactly zero for pixels with CE > k
    keep = torch.ones(g.shape[0], dtype=torch.bool)
    keep[wrong] = False
    ref = torch.autograd.grad(ce.view(-1)[keep].sum() / ce.numel(), logits)[0]
    ref = ref.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    torch.testing.assert_close(g[keep], ref[keep])
    assert (g[keep].abs().sum(1) > 0).all()


def test_puf_gate_is_strict():
    """All-zero logits with 2 classes give CE = log 2 at every pixel: gate inactive at beta = log 2."""
    logits = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    target = torch.zeros(1, 2, 2, dtype=torch.int64)
    mean_ce = F.cross_entropy(logits, target)
    _, on = _puf(logits, target, beta=mean_ce.item(), k=0.1)
    assert not bool(on)
    loss, on = _puf(logits, target, beta=math.nextafter(mean_ce.item(), 1.0), k=0.1)
    assert bool(on)
    assert loss.item() == pytest.approx(0.1)


def test_puf_ignore_pixels_contribute_nothing_and_count_in_n():
    logits, target, _ = _fitted_batch(wrong=0)
    target[0, :3] = 255
    logits.requires_grad_(True)
    loss = pretended_underfitting_loss(logits, target, mode=None)
    loss.backward()
    assert (logits.grad[0, :, :3] == 0).all()
    valid = target != 255
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    # release (mmseg 0.8): N counts ignored pixels
    torch.testing.assert_close(loss, ce[valid].sum() / target.numel())
    # opt-in: mean over valid pixels only == F.cross_entropy's mean
    valid_loss = pretended_underfitting_loss(logits, target, mode=None, denominator="valid")
    torch.testing.assert_close(valid_loss, F.cross_entropy(logits, target, ignore_index=255))
    # changing logits at ignored pixels changes nothing
    other = logits.detach().clone()
    other[0, :, :3] = torch.randn_like(other[0, :, :3]) * 10
    torch.testing.assert_close(pretended_underfitting_loss(other, target), pretended_underfitting_loss(
        logits.detach(), target))


def test_puf_padding_shifts_the_gate():
    """With the release's denominator, a large ignored border lowers the mean CE and can open the gate."""
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 1.0
    target = torch.zeros(1, 4, 4, dtype=torch.int64)  # CE = log(1 + 2/e) ≈ 0.551 per valid pixel
    target[:, :, 2:] = 255
    _, on_all = _puf(logits, target)
    _, on_valid = _puf(logits, target, denominator="valid")
    assert bool(on_all)
    assert not bool(on_valid)


def test_puf_modes_hand_computed():
    logits = torch.tensor([[[[3.0, 0.0]], [[0.0, 3.0]]]], dtype=torch.float64)  # 1×2×1×2
    target = torch.tensor([[[0, 0]]])
    ce_small = math.log(1 + math.exp(-3.0))
    ce_big = math.log(1 + math.exp(3.0))
    kw = dict(beta=10.0, k=0.5)
    clamp = pretended_underfitting_loss(logits, target, mode="clamp", **kw)
    assert clamp.item() == pytest.approx((ce_small + 0.5) / 2)
    ignore = pretended_underfitting_loss(logits, target, mode="ignore", **kw)
    assert ignore.item() == pytest.approx(ce_small / 2)
    pw = pretended_underfitting_loss(logits, target, mode="pow", **kw)
    assert pw.item() == pytest.approx(((ce_small + 1e-9) ** 0.5 + (ce_big + 1e-9) ** 0.5) / 2)
    plain = pretended_underfitting_loss(logits, target, mode=None, **kw)
    assert plain.item() == pytest.approx((ce_small + ce_big) / 2)


def test_puf_class_weight_like_mmseg():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    w = torch.tensor([0.5, 1.0, 2.0])
    loss = pretended_underfitting_loss(logits, target, mode=None, class_weight=w)
    ce = F.cross_entropy(logits, target, weight=w, reduction="none")
    torch.testing.assert_close(loss, ce.mean())  # mean of weighted CE over all pixels, not / sum(w)


@pytest.mark.parametrize("mode", ["clamp", "pow", "ignore"])
@pytest.mark.parametrize("gate", ["on", "off"])
def test_puf_gradcheck_float64_away_from_kink(mode, gate):
    logits, target, _ = _fitted_batch(wrong=2, hw=3)
    logits = logits * 0.5  # CE ≈ 0.01 (right) and ≈ 3 (wrong): far from k = 0.5
    ce = F.cross_entropy(logits, target, reduction="none")
    assert ((ce - 0.5).abs() > 0.05).all()
    beta = 5.0 if gate == "on" else 1e-3
    logits.requires_grad_(True)
    fn = lambda z: pretended_underfitting_loss(z, target, beta=beta, k=0.5, mode=mode)
    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 3.0), st.floats(0.05, 3.0))
def test_puf_never_exceeds_plain_ce(seed, beta, k):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 5, 5, generator=g) * 4
    target = torch.randint(0, 4, (2, 5, 5), generator=g)
    plain = F.cross_entropy(logits, target)
    for mode in ("clamp", "ignore"):
        loss, on = _puf(logits, target, beta=beta, k=k, mode=mode)
        assert loss <= plain * (1 + 1e-5) + 1e-6  # float32 sums in another order: relative slack
        assert bool(on) == bool(plain < beta)
        if bool(on):
            assert loss <= k + 1e-6
        else:
            torch.testing.assert_close(loss, plain)


def test_puf_module_presets_weight_and_state():
    crit = PretendedUnderFittingLoss()
    assert (crit.beta, crit.k, crit.mode, crit.ignore_index, crit.denominator) == (0.5, 0.5, "clamp", 255, "all")
    coco = PretendedUnderFittingLoss.coco(weight=0.4)
    assert (coco.beta, coco.k, coco.weight) == (0.8, 0.8, 0.4)
    logits, target, _ = _fitted_batch()
    aux = PretendedUnderFittingLoss(weight=0.4)
    torch.testing.assert_close(aux(logits, target), 0.4 * crit(logits, target))
    assert bool(crit.last_active)
    crit(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64))
    assert not bool(crit.last_active)
    assert "last_active" not in crit.state_dict()
    assert "beta=0.5" in repr(crit)
    cw = PretendedUnderFittingLoss(class_weight=torch.ones(4), mode=None)
    torch.testing.assert_close(cw(logits.float(), target), F.cross_entropy(logits.float(), target))


def test_puf_dtype_and_autocast_run_in_float32():
    logits = torch.randn(1, 3, 4, 4).to(torch.bfloat16).requires_grad_(True)
    target = torch.randint(0, 3, (1, 4, 4))
    loss = pretended_underfitting_loss(logits, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16
    assert pretended_underfitting_loss(logits.double(), target).dtype == torch.float64


def test_puf_compiles():
    crit = PretendedUnderFittingLoss()
    compiled = torch.compile(crit, backend="eager")
    logits, target, _ = _fitted_batch(dtype=torch.float32)
    torch.testing.assert_close(compiled(logits, target), crit(logits, target))


def test_puf_bad_inputs():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match="beta"):
        pretended_underfitting_loss(logits, target, beta=0.0)
    with pytest.raises(ValueError, match="k "):
        pretended_underfitting_loss(logits, target, k=-1.0)
    with pytest.raises(ValueError, match="beta"):
        PretendedUnderFittingLoss(beta=-0.5)
    with pytest.raises(ValueError, match="k "):
        PretendedUnderFittingLoss(k=0)
    with pytest.raises(ValueError, match="mode"):
        PretendedUnderFittingLoss(mode="square")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="denominator"):
        pretended_underfitting_loss(logits, target, denominator="batch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"target must have shape \(2, 4, 4\)"):
        pretended_underfitting_loss(logits, target[:, :2])
    with pytest.raises(ValueError, match="outside"):
        pretended_underfitting_loss(logits, target + 3)
    with pytest.raises(TypeError, match="integer"):
        pretended_underfitting_loss(logits, target.float())
    with pytest.raises(TypeError, match="floating"):
        pretended_underfitting_loss(target, target)
    with pytest.raises(ValueError, match="class_weight must have 3"):
        pretended_underfitting_loss(logits, target, class_weight=torch.ones(2))


def test_puf_all_ignored_valid_denominator_is_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    loss = pretended_underfitting_loss(logits, target, denominator="valid")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()

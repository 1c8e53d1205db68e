"""Trainer methods L2G, PPL and PMM: released config values, training steps, gradients, end-to-end presets.

The expected values are the released ones (PengtaoJiang/L2G, Eli-YiLi/PMM and Eli-YiLi/WSSS_MMSeg, deeplab-pytorch)
and, for PPL (no released code), the inferred R50-IRN profile.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from wsss_blocks.cam import normalize_cams
from wsss_blocks.losses import adaptive_min_pooling_loss
from wsss_blocks.models import seam_pcm_input
from wsss_blocks.train.config import ConfigError
from wsss_blocks.train.methods import get_method
from wsss_blocks.train.methods.l2g import L2GMethod
from wsss_blocks.train.methods.pmm import PMMMethod, _max_onehot
from wsss_blocks.train.methods.ppl import PPLMethod
from wsss_blocks.train.schema import load_run_config

TINY = {"widths": [8, 16, 16], "output_stride": 8}
TINY4 = {"widths": [8, 16, 16, 24], "output_stride": 8}


def _method(cfg_dict: dict, num_classes: int = 5):
    cfg = load_run_config(cfg_dict)
    return cfg.method_class()(cfg, cfg.method_config(), num_classes)


def _batch(b: int = 2, size: int = 32, c: int = 5, saliency: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(b, c)
    labels[0, 1] = labels[0, 3] = 1
    labels[1:, 2] = 1
    out = {"image": torch.randn(b, 3, size, size, generator=g), "labels": labels}
    if saliency:
        out["saliency"] = torch.rand(b, 1, size, size, generator=g)
    return out


def _params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


def _nonzero(gs: list[torch.Tensor | None]) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in gs)


def _none_or_zero(gs: list[torch.Tensor | None]) -> bool:
    return all(g is None or bool(g.abs().sum() == 0) for g in gs)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_has_the_three_methods():
    assert get_method("l2g") is L2GMethod
    assert get_method("ppl") is PPLMethod
    assert get_method("pmm") is PMMMethod
    assert L2GMethod.paper_numbers["val_miou"] == 72.1      # (VOC val 72.1)
    assert PMMMethod.paper_numbers["val_miou"] == 70.0      # (VOC val 70.0)
    assert PMMMethod.cam_normalization == "minmax"          # (per-class min-max)


# ------------------------------------------------------------------------------------------------ (a) configs
def _common_deeplab(cfg):
    s = cfg.seg
    assert s.model == "deeplabv2"
    assert s.backbone == "resnet101"
    assert s.lr == 2.5e-4
    assert s.momentum == 0.9
    assert s.weight_decay == 5e-4
    assert s.poly_power == 0.9
    assert s.lr_update_every == 10
    assert s.crop_size == 321
    assert s.scales == (0.5, 0.75, 1.0, 1.25, 1.5)
    assert s.msc_train == (0.5, 0.75)
    assert s.normalize == "caffe"
    assert s.model_kwargs["rates"] == [6, 12, 18, 24]
    assert s.crf is True


def _assert_crf_deeplab(params):
    from wsss_blocks.crf import PRESETS

    params = dict(params)
    resolved = {**PRESETS[params.pop("preset")], **params} if "preset" in params else params
    # / : 10 iterations, Gaussian sxy 1 compat 3, bilateral sxy 67 srgb 3 compat 4
    assert resolved == {"iterations": 10, "pos_w": 3.0, "pos_xy": 1.0, "bi_w": 4.0, "bi_xy": 67.0, "bi_rgb": 3.0}


def test_l2g_voc_config_equals_release():
    cfg = load_run_config("l2g_voc")
    m, c, p = cfg.method_config(), cfg.cam, cfg.pseudo
    assert cfg.method == "l2g"
    assert cfg.data.num_classes == 20
    assert cfg.data.train_split == "train_aug"
    assert cfg.data.saliency_dir == "Sal"
    assert cfg.data.cam_eval_split == "train_aug"
    assert c.backbone == "resnet38d"
    assert c.batch_size == 3
    assert c.epochs == 10
    assert c.steps is None
    assert c.lr_schedule == "step"
    assert c.lr_decay_epochs == (5,)
    assert c.lr_decay_gamma == 0.1
    assert c.resize_short == (512, 512)
    assert c.resize_long is None
    assert c.interpolation == "bicubic"
    assert p.interpolation == "bicubic"
    assert c.shuffle is False
    assert c.optimizer == "sgd"
    assert c.momentum == 0.9
    assert c.nesterov is True
    assert c.weight_decay == 5e-4
    assert c.lr == 1e-3
    assert c.crop_size == 448
    assert c.color_jitter == (0.3, 0.3, 0.3, 0.1)
    assert c.hflip is False
    assert cfg.data.normalize == "imagenet"
    assert m.num_patches == 6
    assert m.patch_mode == "corners+random"
    assert m.patch_size == 320
    assert m.kd_weight == 10.0
    assert m.fg_threshold == 0.001
    assert m.bg_target == "binary"
    assert m.roi_aligned is False
    assert m.keep_max is True
    assert m.global_cls_weight == 0.0
    assert m.frozen == ("conv1a", "b2", "b2_1", "b2_2")
    assert m.freeze_bn is True
    assert m.pcm is True
    assert m.use_saliency is True
    assert p.scales == (0.5, 1.0, 1.5, 2.0)
    assert p.flip is True
    assert p.bg_score == 0.25
    assert p.sweep_thresholds == (0.10, 0.15, 0.20, 0.25, 0.30)
    _common_deeplab(cfg)
    s = cfg.seg
    assert s.batch_size == 5
    assert s.accumulate == 2
    assert s.steps == 20000
    assert s.eval_scales == (1.0, 0.5, 0.75)
    assert s.eval_flip is False
    assert s.eval_scale_reduce == "max"
    _assert_crf_deeplab(s.crf_params)


def test_l2g_coco_config_equals_release():
    cfg = load_run_config("l2g_coco")
    m, c, p = cfg.method_config(), cfg.cam, cfg.pseudo
    assert cfg.data.dataset == "coco"
    assert cfg.data.num_classes == 80
    assert c.batch_size == 12
    assert c.epochs == 15
    assert c.lr == 0.1
    assert c.poly_power == 0.7
    assert c.lr_schedule == "poly"
    assert c.resize == (448, 448)
    assert c.resize_long is None
    assert cfg.data.mean == (0.471, 0.448, 0.408)
    assert cfg.data.std == (0.234, 0.239, 0.242)
    assert p.interpolation == "bicubic"
    assert c.shuffle is False
    # PolyOptimizer bug kept: momentum = 5e-4, weight decay 0, no Nesterov
    assert c.momentum == 5e-4
    assert c.weight_decay == 0.0
    assert c.nesterov is False
    assert c.crop_size == 448
    assert c.hflip is False
    assert m.num_patches == 4
    assert m.patch_mode == "random"
    assert m.kd_weight == 30.0
    assert m.fg_threshold == 0.1
    assert m.bg_target == "soft"
    assert p.bg_score == 0.25
    assert p.sweep_thresholds == (0.2, 0.3)
    _common_deeplab(cfg)
    assert cfg.seg.batch_size == 20
    assert cfg.seg.accumulate == 1
    assert cfg.seg.steps == 50000
    _assert_crf_deeplab(cfg.seg.crf_params)


def test_ppl_voc_config_equals_spec_profile():
    cfg = load_run_config("ppl_voc")
    m, c = cfg.method_config(), cfg.cam
    assert c.backbone == "resnet50"
    assert c.backbone_kwargs == {"output_stride": 16}
    assert c.resize_long == (320, 640)
    assert c.crop_size == 512
    assert c.hflip is True
    assert c.lr == 0.1
    assert c.weight_decay == 1e-4
    assert c.batch_size == 16
    assert c.poly_power == 0.9
    assert c.momentum == 1e-4                               # (IRN PolyOptimizer quirk)
    assert m.head_lr_mult == 10.0                           # (×10 on new layers)
    assert c.epochs == sum(m.stage_epochs) == 15
    assert m.stage_epochs == (5, 5, 5)
    assert m.insert_points == (2, 3, 4)
    assert m.grid == 2
    assert m.variant == "progressive"
    assert m.schedule == "sequential"
    assert m.cam_source == "concat"
    assert m.freeze_bn is True
    p = cfg.pseudo
    assert p.scales == (1.0, 0.5, 1.5, 2.0)
    assert p.flip is True
    assert p.bg_score == 0.15
    _common_deeplab(cfg)
    _assert_crf_deeplab(cfg.seg.crf_params)


def test_pmm_voc_config_equals_release():
    cfg = load_run_config("pmm_voc")
    m, c, p, s = cfg.method_config(), cfg.cam, cfg.pseudo, cfg.seg
    assert c.backbone == "resnet38d"
    assert m.b7_dilation == 2
    assert m.frozen == ("conv1a", "b2", "b2_1", "b2_2")
    assert m.dropout == 0.5
    assert c.batch_size == 24
    assert c.epochs == 8
    assert c.lr == 0.02
    assert c.momentum == 5e-4
    assert c.weight_decay == 5e-4
    assert c.poly_power == 0.9
    assert c.resize_long == (448, 768)
    assert c.crop_size == 448
    assert c.hflip is True
    assert c.color_jitter == (0.3, 0.3, 0.3, 0.1)
    assert m.view_scale_factor == 0.3
    assert m.ecr_topk == 0.2
    assert m.cam_source == "pcm"
    from wsss_blocks.train.pipeline import chain_spec

    chain = chain_spec(cfg)
    assert (chain.post, chain.refine, chain.rule) == (("cov",), "none", "ppmg")
    assert chain.args["ppmg"].alpha == 11.0
    assert chain.args["cov"].fg_threshold == 0.05
    assert chain.args["cov"].cv_scale == 0.3
    assert chain.args["cov"].min_exponent is None
    assert chain.args["ppmg"].posterior_threshold == 0.5
    assert chain.args["ppmg"].foreground == "crf"
    assert p.scales == (0.5, 1.0, 1.5, 2.0)
    assert p.flip is True
    assert p.reduce == "sum"
    assert p.sweep_thresholds == tuple(round(0.05 + 0.01 * i, 2) for i in range(15))
    assert cfg.data.cam_eval_split == "val"
    # stages B/C (run.py, infer_multi_scale.py, tool/data.py, scalenet_SEAM.py, infer_multi_crop.py)
    assert m.stages == "ABC"
    assert m.cam_inference == "multi_crop"
    assert m.rough_mask_scales == (0.5, 1.0, 1.5, 2.0)
    assert m.rough_mask_alpha == 24.0
    assert m.rough_mask_crf == {"preset": "psa"}
    assert (m.tile_fg_threshold, m.tile_match_threshold) == (0.9, 0.1)
    assert m.crop_scales == tuple(0.75 + 0.25 * i for i in range(10))
    assert (m.crop_size, m.crop_stride) == (448, 300)
    assert m.tile_hflip is True
    assert m.tile_color_jitter == (0.3, 0.3, 0.3, 0.1)
    assert (m.stage_c_backbone, m.stage_c_pretrained) == ("scalenet101", "scalenet101-imagenet")
    assert m.stage_c_frozen == ("conv1", "bn1", "layer1")
    assert m.stage_c_freeze_bn is True
    assert m.stage_c_dropout == 0.0
    assert (m.stage_c_batch_size, m.stage_c_epochs, m.stage_c_lr) == (16, 20, None)  # lr: cam.lr 0.02
    assert chain.args["ppmg"].crf_channel_order == "bgr"
    # the PSPNet recipe (WSSS_MMSeg configs/pspnet_wsss/pspnet_res2net_20k_voc12aug_pus.py and its bases)
    assert (s.model, s.backbone, s.pretrained) == ("pspnet", "res2net101_v1b", "res2net101-v1b-imagenet")
    assert s.model_kwargs == {"channels": 512, "aux_channels": 256, "pool_scales": [1, 2, 3, 6], "dropout": 0.1,
                              "aux_weight": 0.4}
    assert s.sync_bn is True
    assert s.normalize == "imagenet"
    assert (s.lr, s.momentum, s.weight_decay, s.poly_power, s.min_lr) == (0.005, 0.9, 5e-4, 0.9, 1e-4)
    assert s.param_groups == "uniform"
    assert (s.batch_size, s.accumulate) == (16, 1)
    assert (s.augment, s.img_scale, s.ratio_range, s.crop_size, s.cat_max_ratio) == (
        "mmseg", (2048, 512), (0.5, 2.0), 512, 0.75)
    assert s.hflip is True
    assert s.photometric_distortion is True
    assert s.msc_train == ()
    assert s.loss_at == "labels"
    assert (s.eval_img_scale, s.eval_slide, s.eval_average) == ((2048, 512), (512, 480), "probs")
    assert s.crf is True
    assert s.loss == "puf"
    assert s.loss_args == {"beta": 0.5, "k": 0.5, "mode": "clamp"}
    assert s.steps == 20000
    assert s.eval_scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert s.eval_flip is True
    assert c.interpolation == "bicubic"
    assert p.score_eval_split is True                       # PPMG scored on VOC val
    # cyclic pseudo-masks : best val of round 0 (every 2k), relabel with CRF, fresh net, plain CE
    assert s.eval_every == 2000
    assert s.cyclic_rounds == 1
    assert s.cyclic_select == "best"
    assert s.cyclic_loss == "ce"
    assert s.cyclic_policy == "replace"
    assert s.cyclic_crf is True
    _assert_crf_deeplab(s.crf_params)
    from wsss_blocks.crf import PRESETS

    # : per-class binary CRF, 10 iterations, Gaussian sxy 3 compat 10, bilateral 80/13/10
    assert chain.args["ppmg"].crf_params == {"preset": "pmm-binary"}
    assert PRESETS["pmm-binary"] == {
        "iterations": 10, "pos_w": 10.0, "pos_xy": 3.0, "bi_w": 10.0, "bi_xy": 80.0, "bi_rgb": 13.0,
        "sum_to_one": "ignore"}


def test_pmm_coco_config_equals_release():
    cfg = load_run_config("pmm_coco")
    c, s = cfg.cam, cfg.seg
    assert cfg.data.dataset == "coco"
    assert cfg.data.num_classes == 80
    m = cfg.method_config()
    assert m.stages == "C"  # run.py:85-86: stage C on random crops, no rough masks
    assert (m.stage_c_batch_size, m.stage_c_epochs, m.stage_c_lr) == (8, 20, None)
    assert c.lr == 0.01
    assert c.momentum == 5e-4
    assert c.resize_long == (448, 768)
    assert c.crop_size == 448
    assert s.loss == "puf"
    assert s.loss_args == {"beta": 0.8, "k": 0.8, "mode": "clamp"}
    assert (s.model, s.backbone, s.lr, s.min_lr, s.steps, s.batch_size) == (
        "pspnet", "res2net101_v1b", 0.01, 5e-5, 40000, 32)
    assert s.cyclic_rounds == 0
    from wsss_blocks.train.pipeline import chain_spec

    assert chain_spec(cfg).args["ppmg"].alpha == 11.0


@pytest.mark.parametrize("name", ["l2g_synthetic", "ppl_synthetic", "pmm_synthetic"])
def test_synthetic_presets_load_and_keep_the_method(name):
    cfg = load_run_config(name, quick=True)
    assert cfg.data.dataset == "synthetic"
    assert cfg.cam.steps is not None
    assert cfg.seg.steps is not None
    assert cfg.method == name.split("_")[0]
    # the same method rule as the real preset
    real = load_run_config(name.replace("synthetic", "voc"))
    assert cfg.method_config().__class__ is real.method_config().__class__
    assert cfg.seg.loss == real.seg.loss
    from wsss_blocks.train.pipeline import chain_spec

    a, b = chain_spec(cfg), chain_spec(real)
    assert (a.post, a.refine, a.rule) == (b.post, b.refine, b.rule)


def test_unknown_method_arg_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="kd_weight"):
        load_run_config({"method": "l2g", "method_args": {"kd_weigth": 3.0}})


# ------------------------------------------------------------------------------------------------ (b) L2G
def _l2g(**args):
    base = {"patch_size": 16, "frozen": [], "freeze_bn": False}
    base.update(args)
    return _method({"method": "l2g", "data": {"saliency_dir": "Sal"},
                    "cam": {"backbone": "tiny", "backbone_kwargs": TINY}, "method_args": base})


def test_l2g_step_gradients_go_to_the_right_network():
    m = _l2g().train()
    batch = _batch(saliency=True)
    parts = m.losses(batch)
    gl, lo = _params(m.global_net), _params(m.local_net)
    # transfer loss: global network only (the target is built from detached local maps)
    assert _none_or_zero(_grads(parts["kt"], lo))
    assert _nonzero(_grads(parts["kt"], gl))
    # local classification loss: local network only
    assert _none_or_zero(_grads(parts["cls_local"], gl))
    g_local = _grads(parts["cls_local"], lo)
    assert _nonzero(g_local)
    # the background row of the local fc8 gets no classification signal
    fc8_grad = g_local[next(i for i, q in enumerate(lo) if q is m.local_net.fc8.weight)]
    assert fc8_grad is not None
    assert float(fc8_grad[-1].abs().sum()) == 0.0
    assert float(fc8_grad[:-1].abs().sum()) > 0
    torch.manual_seed(3)
    out = m.training_step(batch, 0, 10)
    assert torch.isfinite(out["loss"])
    assert out["loss"].requires_grad
    assert math.isclose(float(out["loss"].detach()), float(out["loss_cls_local"] + out["loss_kt"]), rel_tol=1e-6)


def test_l2g_global_cls_weight_adds_the_global_loss():
    m = _l2g(global_cls_weight=0.5).train()
    batch = _batch(saliency=True)
    torch.manual_seed(5)
    out = m.training_step(batch, 0, 10)
    expect = out["loss_cls_local"] + out["loss_kt"] + 0.5 * out["loss_cls_global"]
    assert math.isclose(float(out["loss"].detach()), float(expect), rel_tol=1e-6)


def test_l2g_pcm_equals_the_released_feature_propagation():
    m = _l2g().eval()
    net = m.global_net
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = net.backbone(x)
        conv6 = maps[-1]
        hw = tuple(conv6.shape[-2:])
        aff = net.pcm.affinity(x, maps[-3], maps[-2], hw)
        # release (models/resnet38.py): propagate the conv6 features, then apply fc8
        released = net.fc8(conv6) + net.fc8(net.pcm.propagate(conv6, aff))
        ours = net(x)
    torch.testing.assert_close(ours, released, rtol=1e-4, atol=1e-5)
    # affinity columns sum to ~1
    torch.testing.assert_close(aff.sum(1), torch.ones_like(aff.sum(1)), rtol=1e-3, atol=1e-3)


def test_l2g_cam_fn_is_the_global_networks_foreground_maps():
    m = _l2g().eval()
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        cams = m.cam_fn(x)
        full = m.global_net(x)
    assert cams.shape == (1, 5, 5, 3)
    torch.testing.assert_close(cams, full[:, :-1])           # raw: clamped after the scale average
    m2 = _l2g(relu_per_scale=True).eval()
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m2.cam_fn(x), F.relu(full[:, :-1]))


@pytest.mark.parametrize("which", ["l2g", "pmm"])
def test_psa_parameter_groups(which):
    # backbone weights 1×, new layers (fc8, f8_3, f8_4, f9) 10×
    m = _l2g() if which == "l2g" else _pmm()
    groups = {g["name"]: g for g in m.param_groups(0.01, 5e-4)}
    head = {id(p) for p in groups["head_weight"]["params"]}
    heads = [m.global_net, m.local_net] if which == "l2g" else [m.net]
    for net in heads:
        for mod in (net.fc8, net.pcm.f8_3, net.pcm.f8_4, net.pcm.f9):
            assert id(mod.weight) in head
        assert all(id(p) not in head for p in net.backbone.parameters())
    assert groups["head_weight"]["lr"] == pytest.approx(0.1)
    assert groups["backbone_weight"]["lr"] == pytest.approx(0.01)
    assert groups["head_weight"]["weight_decay"] == 5e-4


def test_l2g_without_saliency_runs_plain_transfer():
    m = _method({"method": "l2g", "cam": {"backbone": "tiny", "backbone_kwargs": TINY},
                 "method_args": {"patch_size": 16, "frozen": [], "use_saliency": False, "patch_mode": "random",
                                 "num_patches": 3}}).train()
    out = m.training_step(_batch(), 0, 5)
    assert torch.isfinite(out["loss"])


def test_l2g_bad_inputs():
    with pytest.raises(ValueError, match="saliency_dir"):
        _method({"method": "l2g", "cam": {"backbone": "tiny", "backbone_kwargs": TINY},
                 "method_args": {"patch_size": 16}})
    with pytest.raises(ValueError, match="multiple of the output stride 8"):
        _l2g(patch_size=20)
    with pytest.raises(ValueError, match="frozen module 'conv1a'"):
        _l2g(frozen=["conv1a"])
    m = _l2g().train()
    with pytest.raises(ValueError, match="without 'saliency'"):
        m.training_step(_batch(), 0, 1)


# ------------------------------------------------------------------------------------------------ (b) PPL
def _ppl(**args):
    base = {"insert_points": [1, 2, 3], "stage_epochs": [1, 2, 1]}
    base.update(args)
    return _method({"method": "ppl", "cam": {"backbone": "tiny", "backbone_kwargs": TINY4}, "method_args": base})


def test_ppl_sequential_stage_follows_the_steps():
    m = _ppl().train()
    # 4 schedule epochs over 8 steps: epochs 0,0,1,1,2,2,3,3 -> stages 0,0,1,1,1,1,2,2 (stage_epochs 1, 2, 1)
    assert [m.stage_at(s, 8) for s in range(8)] == [0, 0, 1, 1, 1, 1, 2, 2]
    batch = _batch()
    out = m.training_step(batch, 5, 8)
    assert int(m.stage_index) == 1
    assert float(out["ppl_stage"]) == 2.0
    expect = F.multilabel_soft_margin_loss(m.net(batch["image"], insert_after=2).logits, batch["labels"])
    torch.testing.assert_close(out["loss"], expect)
    m.training_step(batch, 7, 8)
    assert m.current_points() == (3,)


def test_ppl_gradients_and_frozen_stages():
    m = _ppl(frozen_stages=1).train()
    out = m.training_step(_batch(), 0, 4)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    stages = list(m.net.stages)
    assert all(p.grad is None for p in stages[0].parameters())          # frozen
    for st in stages[1:]:
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in st.parameters())
    assert float(m.net.classifier.weight.grad.abs().sum()) > 0
    names = {g["name"]: g for g in m.param_groups(0.1, 1e-4)}
    assert names["head_weight"]["lr"] == pytest.approx(1.0)
    assert names["backbone_weight"]["lr"] == pytest.approx(0.1)


def test_ppl_cyclic_sums_every_stage():
    m = _ppl(schedule="cyclic", stage_loss_weights=[1.0, 2.0, 1.0]).train()
    batch = _batch()
    out = m.training_step(batch, 0, 4)
    y = batch["labels"]
    parts = [F.multilabel_soft_margin_loss(m.net(batch["image"], insert_after=p).logits, y) for p in (1, 2, 3)]
    torch.testing.assert_close(out["loss"], parts[0] + 2 * parts[1] + parts[2])
    assert int(m.stage_index) == 2


def test_ppl_cam_fn_pads_and_crops():
    m = _ppl().eval()
    m.stage_index.fill_(2)
    x = torch.randn(1, 3, 30, 27)
    with torch.no_grad():
        cams = m.cam_fn(x)
        padded = F.pad(x, (0, 32 - 27, 0, 32 - 30))
        ref = F.relu(m.net(padded, insert_after=3).cams[..., :4, :4])
    assert cams.shape == (1, 5, 4, 4)
    assert bool((cams >= 0).all())
    torch.testing.assert_close(cams, ref)
    g = _ppl(cam_source="global").eval()
    g.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(g.cam_fn(x), F.relu(m.net(padded, insert_after=3).full_cams[..., :4, :4]))


def test_ppl_explicit_variant_trains_one_wide_classifier():
    m = _ppl(variant="explicit").train()
    assert m.net.classifier.weight.shape[1] == 4 * 24           # 3 branches + global, D = 24
    out = m.training_step(_batch(), 0, 4)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert float(m.net.classifier.weight.grad.abs().sum()) > 0


def test_ppl_bad_inputs():
    with pytest.raises(ValueError, match="stage_epochs"):
        _ppl(stage_epochs=[1, 1])
    with pytest.raises(ValueError, match="frozen_stages"):
        _ppl(frozen_stages=9)
    with pytest.raises(ValueError, match="out of range"):
        _ppl(insert_points=[1, 4], stage_epochs=[1, 1])


# ------------------------------------------------------------------------------------------------ (b) PMM
def test_max_norm_and_max_onehot_values():
    p = torch.tensor([[[[-1.0, 0.0], [2.0, 4.0]]]])
    e = 1e-5
    expect = torch.tensor([[[[0.0, 0.0], [(2 - e) / (4 + e), (4 - e) / (4 + e)]]]])
    torch.testing.assert_close(normalize_cams(p, "seam_minmax"), expect)  # SEAM's max_norm
    x = torch.tensor([[[[0.9]], [[0.2]], [[0.5]], [[0.5]]]])     # bg, then 3 foreground channels
    assert _max_onehot(x).flatten().tolist() == pytest.approx([0.9, 0.0, 0.5, 0.5])


def test_adaptive_min_pooling_loss_values():
    x = torch.tensor([[[[0.4, 0.3], [0.9, 0.8]], [[0.1, 0.1], [0.1, 0.1]]]])   # per-pixel max 0.4 0.3 0.9 0.8
    assert float(adaptive_min_pooling_loss(x)) == pytest.approx(0.3)          # k = 1: the smallest
    y = torch.tensor([[[[-0.2, 0.6], [0.5, 0.7]]]])
    assert float(adaptive_min_pooling_loss(y)) == pytest.approx(0.0)          # ReLU of −0.2
    z = torch.arange(16.0).view(1, 1, 4, 4).repeat(2, 1, 1, 1)                # k = 4: 0+1+2+3 per image
    assert float(adaptive_min_pooling_loss(z)) == pytest.approx(2 * 6 / 8)


def test_seam_pcm_input_values():
    cam = torch.tensor([[[[5.0, 1.0]], [[2.0, -1.0]], [[4.0, 3.0]]]])          # bg, c1, c2 at two pixels
    out = seam_pcm_input(cam)
    e = 1e-5
    c1 = [(2 - e) / (2 + e), 0.0]
    c2 = [(4 - e) / (4 + e), (3 - e) / (4 + e)]
    top = [max(c1[0], c2[0]), max(c1[1], c2[1])]
    expect = [[1 - top[0], 1 - top[1]], [0.0, 0.0], c2]                       # c1 loses the arg-max at both
    torch.testing.assert_close(out[0, :, 0], torch.tensor(expect))


def _pmm(**args):
    base = {"frozen": [], "freeze_bn": False}
    base.update(args)
    return _method({"method": "pmm", "cam": {"backbone": "tiny", "backbone_kwargs": TINY}, "method_args": base})


def test_pmm_losses_and_gradients():
    m = _pmm().train()
    batch = _batch(size=48)
    parts = m.losses(batch)
    assert set(parts) == {"cls", "minpool", "er", "ecr"}
    assert all(torch.isfinite(v) for v in parts.values())
    fc8 = [m.net.fc8.weight]
    pcm = _params(m.net.pcm)
    assert _nonzero(_grads(parts["cls"], fc8))
    assert _none_or_zero(_grads(parts["cls"], pcm))
    # cam_rv refines a detached CAM: the min-pooling loss reaches the PCM convolutions, never fc8
    assert _none_or_zero(_grads(parts["minpool"], fc8))
    assert _nonzero(_grads(parts["ecr"], pcm))
    assert _nonzero(_grads(parts["er"], fc8))
    out = m.training_step(batch, 0, 4)
    assert math.isclose(float(out["loss"].detach()),
                        float(out["loss_cls"] + out["loss_minpool"] + out["loss_er"] + out["loss_ecr"]), rel_tol=1e-5)


def test_pmm_resnet38_freezes_the_released_blocks():
    m = _method({"method": "pmm", "cam": {"backbone": "resnet38d_tiny"},
                 "method_args": {"frozen": ["conv1a", "b2"]}})
    bb = m.net.backbone
    assert bb.b7.conv_branch2b1.dilation == (2, 2)           # b7 dilation 2
    assert not any(p.requires_grad for p in bb.conv1a.parameters())
    assert not any(p.requires_grad for p in bb.b2.parameters())
    assert all(not mod.training for mod in bb.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    m.train()
    assert all(not mod.training for mod in bb.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    out = m.training_step(_batch(size=32), 0, 4)
    out["loss"].backward()
    assert bb.conv1a.weight.grad is None
    assert float(bb.b3.conv_branch2a.weight.grad.abs().sum()) > 0


def test_pmm_cam_fn_and_chain_masks():
    from wsss_blocks.pseudo_mask import proportional_pseudo_mask

    m = _pmm().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cams = m.cam_fn(x)
        _, rv = m.net(x)
    assert cams.shape == (2, 5, 4, 4)
    assert bool((cams >= 0).all())
    torch.testing.assert_close(cams, rv[:, 1:])
    g = torch.Generator().manual_seed(0)
    c01 = torch.rand(2, 5, 16, 16, generator=g)
    labels = _batch()["labels"]
    img = torch.rand(2, 3, 16, 16, generator=g)
    from wsss_blocks.train.pipeline import PseudoChain

    cfg = load_run_config("pmm_synthetic", ["pseudo.args.ppmg.foreground=threshold", "data.num_classes=5"])
    masks = PseudoChain(cfg).masks(c01, labels, img, bg_score=0.1)
    ref = proportional_pseudo_mask(c01, labels, img, alpha=11.0, foreground="threshold")
    assert torch.equal(masks, ref)
    assert set(masks[0].unique().tolist()) <= {0, 2, 4}
    assert set(masks[1].unique().tolist()) <= {0, 3}


def test_pmm_bad_inputs():
    with pytest.raises(ValueError, match="view_scale_factor"):
        _pmm(view_scale_factor=1.5)
    with pytest.raises(ValueError, match="ecr_topk"):
        _pmm(ecr_topk=0.0)
    with pytest.raises(ConfigError, match=r"moved to pseudo\.args\.ppmg\.foreground"):
        load_run_config({"method": "pmm", "method_args": {"foreground": "slic"}})
    with pytest.raises(ConfigError, match=r"pseudo\.args\.ppmg\.foreground"):
        load_run_config({"method": "pmm", "pseudo": {"rule": "ppmg", "args": {"ppmg": {"foreground": "slic"}}}})


# ------------------------------------------------------------------------------------------------ (c) end to end
@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic_cache")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["l2g", "ppl", "pmm"])
def test_synthetic_preset_runs_all_three_stages(method, synth_cache, tmp_path):
    from wsss_blocks.train.reproduce import reproduce

    ov = ["runtime.progress=false", "runtime.plots=false", f"data.synthetic.cache_dir={synth_cache}",
          "data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.synthetic.image_size=64",
          "cam.steps=2", "cam.batch_size=4", "cam.crop_size=64", "cam.resize_long=[64, 72]",
          "seg.steps=2", "seg.batch_size=4", "seg.crop_size=64", "pseudo.scales=[1.0]", "pseudo.flip=false",
          "seg.eval_scales=[1.0]", "seg.eval_flip=false", "runtime.checkpoint_every=1000",
          "cam.pretrained=null", "seg.pretrained=null"]
    if method == "pmm":
        ov += ["method_args.stage_c_steps=2", "method_args.stage_c_batch_size=4", "method_args.crop_scales=[1.0, 2.0]"]
    if method == "l2g":
        ov.append("method_args.patch_size=40")
    res = reproduce(method, out=tmp_path / "run", overrides=ov, verbose=False)
    ours = res["ours"]
    for key in ("cam_miou", "pseudo_miou", "val_miou"):
        assert ours[key] is not None
        assert 0.0 <= ours[key] <= 1.0
        assert math.isfinite(ours[key])
    masks = sorted((tmp_path / "run" / "pseudo" / "masks").glob("*.png"))
    assert len(masks) == 16
    assert (tmp_path / "run" / "cam" / "model.pt").is_file()
    assert (tmp_path / "run" / "seg" / "model.pt").is_file()
    if method == "pmm":  # the preset runs one cyclic pseudo-mask round, relabelled by the last round-0 model
        assert not (tmp_path / "run" / "seg" / "best.pt").exists()  # nothing is picked on val
        assert len(list((tmp_path / "run" / "seg" / "cyclic_masks_r1").glob("*.png"))) == 16
        assert res["ours"]["val_miou"] == pytest.approx(json.loads(
            (tmp_path / "run" / "seg" / "eval_val.json").read_text())["miou"])
        assert json.loads((tmp_path / "run" / "seg" / "eval_val.json").read_text())["model"].endswith(
            "round1/model.pt")

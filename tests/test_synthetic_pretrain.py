"""The synthetic stand-in for ImageNet weights: pretraining, caching, loading into every network, config checks."""

from __future__ import annotations

import json

import pytest
import torch

from wsss_blocks.models import build_backbone
from wsss_blocks.train.config import ConfigError
from wsss_blocks.train.schema import SyntheticDataConfig, SyntheticPretrainConfig, load_run_config
from wsss_blocks.train.synthetic_pretrain import (
    pretrain_key,
    pretrain_synthetic_backbone,
    pretrained_path,
    resolve_synthetic_pretrained,
)

# the tiny trainer overrides switch to random init; these switch back to tiny pretrained backbones
TINY_PRE = ["cam.pretrained=synthetic", "seg.pretrained=synthetic", "data.synthetic.pretrain.num_images=16",
            "data.synthetic.pretrain.num_eval=4", "data.synthetic.pretrain.steps=3",
            "data.synthetic.pretrain.batch_size=4"]
KW = {"widths": [8, 8, 16], "output_stride": 4}


def _syn(cache, **pre):
    p = {"num_images": 16, "num_eval": 4, "steps": 3, "batch_size": 4, **pre}
    return SyntheticDataConfig(image_size=32, num_classes=5, cache_dir=str(cache), body_evidence=0.5,
                               pretrain=SyntheticPretrainConfig(**p))


def test_pretrain_writes_once_and_reuses(tmp_path):
    syn = _syn(tmp_path)
    path = pretrain_synthetic_backbone("tiny", KW, syn, progress=False)
    assert path.parent == tmp_path / "synthetic_pretrained"
    assert path.name.startswith("tiny_")
    rec = json.loads(path.with_suffix(".json").read_text())
    assert rec["key"]["backbone_kwargs"] == {"widths": [8, 8, 16], "output_stride": 8}  # undilated
    assert rec["key"]["seed"] == 1000
    assert rec["key"]["body_evidence"] == 0.5
    assert (rec["key"]["optimizer"], rec["key"]["lr"], rec["key"]["weight_decay"]) == ("sgd", 0.1, 1e-4)  # CNN
    assert rec["eval_images"] == 4
    assert 0.0 <= rec["eval_exact_match"] <= rec["eval_label_accuracy"] <= 1.0
    assert not list(path.parent.glob(".*.tmp"))  # atomic writes leave nothing behind
    mtime = path.stat().st_mtime_ns
    again = pretrain_synthetic_backbone("tiny", {**KW, "output_stride": 8}, syn, progress=False)
    assert again == path
    assert path.stat().st_mtime_ns == mtime
    other = pretrain_synthetic_backbone("tiny", KW, _syn(tmp_path, steps=4), progress=False)
    assert other != path
    assert len(list(path.parent.glob("*.pt"))) == 2
    explicit = pretrain_synthetic_backbone("tiny", KW, _syn(tmp_path, optimizer="sgd", lr=0.1), progress=False)
    assert explicit == path  # the defaults written out are the same settings: the same file


def test_pretraining_is_deterministic_and_changes_the_weights(tmp_path):
    a = torch.load(pretrain_synthetic_backbone("tiny", KW, _syn(tmp_path / "a"), progress=False))["state_dict"]
    b = torch.load(pretrain_synthetic_backbone("tiny", KW, _syn(tmp_path / "b"), progress=False))["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    torch.manual_seed(1000)
    fresh = build_backbone("tiny", widths=(8, 8, 16), output_stride=8).state_dict()
    assert not torch.equal(fresh["stages.0.0.weight"], a["stages.0.0.weight"])
    # loads into the dilated variants (the same parameter shapes)
    for os_ in (2, 4, 8):
        bb = build_backbone("tiny", pretrain_synthetic_backbone("tiny", KW, _syn(tmp_path / "a"), progress=False),
                            widths=(8, 8, 16), output_stride=os_)
        torch.testing.assert_close(bb.state_dict()["stages.2.3.weight"], a["stages.2.3.weight"])


def test_a_broken_record_means_pretraining_again(tmp_path):
    syn = _syn(tmp_path)
    path = pretrain_synthetic_backbone("tiny", KW, syn, progress=False)
    path.with_suffix(".json").write_text("{broken")
    before = torch.load(path)["state_dict"]
    assert pretrain_synthetic_backbone("tiny", KW, syn, progress=False) == path
    assert json.loads(path.with_suffix(".json").read_text())["key"] == json.loads(json.dumps(
        pretrain_key("tiny", KW, syn)))
    for k, v in torch.load(path)["state_dict"].items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(("backbone", "kwargs"), [
    ("resnet38d_tiny", {}),
    ("mit_tiny", {"embed_dims": [8, 16, 16, 16], "strides": [2, 2, 2, 1]}),
])
def test_other_architectures(tmp_path, backbone, kwargs):
    path = pretrain_synthetic_backbone(backbone, {**kwargs, "frozen": ["conv1a"]}, _syn(tmp_path), progress=False)
    key = json.loads(path.with_suffix(".json").read_text())["key"]
    assert key["backbone"] == backbone
    assert key["backbone_kwargs"].get("frozen", []) == []
    if backbone == "resnet38d_tiny":
        assert key["backbone_kwargs"]["freeze_bn"] is False  # BatchNorm learns (the release freezes pretrained BN)
    assert key["optimizer"] == ("adamw" if backbone.startswith("mit_") else "sgd")  # the family's ImageNet recipe
    bb = build_backbone(backbone, path, **kwargs)
    sd = torch.load(path)["state_dict"]
    k = next(iter(sd))
    torch.testing.assert_close(bb.state_dict()[k], sd[k])


def test_trainer_networks_load_the_pretrained_backbone(tmp_path, trainer_tiny):
    from wsss_blocks.train.cam_stage import build_method
    from wsss_blocks.train.distributed import init_distributed
    from wsss_blocks.train.seg_stage import build_seg_model

    cfg = load_run_config("baseline_synthetic", [*trainer_tiny, *TINY_PRE, f"data.synthetic.cache_dir={tmp_path}",
                                                 "seg.backbone_kwargs={widths: [8, 8, 16], output_stride: 8}"])
    assert cfg.cam.pretrained == "synthetic"
    assert cfg.seg.pretrained == "synthetic"
    resolved = resolve_synthetic_pretrained(cfg)
    assert resolved.cam.pretrained == resolved.seg.pretrained  # same widths: one file for both networks
    sd = torch.load(resolved.cam.pretrained)["state_dict"]
    method = build_method(cfg, init_distributed("cpu"))
    seg = build_seg_model(cfg)
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(method.net.backbone.state_dict()[k], v, msg=k)
        torch.testing.assert_close(seg.backbone.state_dict()[k], v, msg=k)
    assert len(list((tmp_path / "synthetic_pretrained").glob("*.pt"))) == 1
    # random init stays selectable
    rnd = load_run_config("baseline_synthetic", trainer_tiny)
    assert resolve_synthetic_pretrained(rnd) is rnd


@pytest.mark.slow
def test_restoring_a_trained_model_needs_no_pretraining(tmp_path, trainer_tiny):
    from wsss_blocks.train.cam_stage import restore_method, train_cam
    from wsss_blocks.train.distributed import init_distributed

    cfg = load_run_config("baseline_synthetic", [*trainer_tiny, *TINY_PRE, f"data.synthetic.cache_dir={tmp_path}",
                                                 "cam.steps=2"])
    model = train_cam(cfg, tmp_path / "run")
    cache = tmp_path / "synthetic_pretrained"
    for f in cache.iterdir():
        f.unlink()
    restore_method(cfg, model, init_distributed("cpu"))
    assert not list(cache.iterdir())


@pytest.mark.parametrize(("overrides", "match"), [
    (["data.dataset=voc", "data.root=/x"], "needs data.dataset: synthetic"),
    (["data.synthetic.pretrain.seed=0"], "must differ from data.synthetic.seed"),
    (["data.synthetic.pretrain.steps=0"], "pretrain.steps must be >= 1"),
    (["data.synthetic.body_evidence=2"], r"body_evidence must lie in \[0, 1\]"),
    (["data.synthetic.pretrain.lr=0"], "lr > 0"),
    (["data.synthetic.pretrain.optimizer=adam"], "optimizer"),
    (["seg.pretrained=synthetic", "cam.pretrained=null", "data.dataset=coco", "data.root=/x"],
     "seg.pretrained: 'synthetic'"),
])
def test_config_checks(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config("baseline_synthetic", overrides)


def test_unsupported_backbone_and_paths(tmp_path):
    with pytest.raises(ConfigError, match="supports the library's backbones"):
        pretrain_synthetic_backbone("timm:resnet18", {}, _syn(tmp_path), progress=False)
    cfg = load_run_config("baseline_synthetic", ["cam.pretrained=weights/x.pth"])
    assert cfg.cam.pretrained.endswith("/weights/x.pth")
    assert cfg.seg.pretrained == "synthetic"
    key = pretrain_key("tiny", KW, _syn(tmp_path))
    assert pretrained_path(key, tmp_path) == pretrained_path(dict(key), str(tmp_path))

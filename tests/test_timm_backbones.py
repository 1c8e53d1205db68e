"""Any timm model as the CAM network's backbone: CNN feature maps, ViT token grids (DINOv2, CLIP, DeiT and register
tokens), weights from files or timm's own download (refused offline), and a CAM-stage run with a tiny random ViT.

Every model is built offline from random weights with small sizes (a few blocks, narrow widths).
"""

from __future__ import annotations

import pytest
import torch

from wsss_blocks.cam import tokens_to_map
from wsss_blocks.models.backbones import TimmBackbone, build_backbone
from wsss_blocks.train.schema import load_run_config

timm = pytest.importorskip("timm")

# (name, small kwargs, prefix tokens): plain ViT, DINOv2, DINOv2 with 4 registers, DeiT distilled, CLIP image tower
VITS = [
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, 1),
    ("vit_small_patch14_dinov2", {"img_size": 28, "depth": 1, "embed_dim": 48, "num_heads": 2}, 1),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "depth": 1, "embed_dim": 48, "num_heads": 2}, 5),
    ("deit_tiny_distilled_patch16_224", {"img_size": 32, "depth": 1}, 2),
    ("vit_base_patch16_clip_224", {"img_size": 32, "depth": 1, "embed_dim": 64, "num_heads": 2}, 1),
]


@pytest.mark.parametrize(("name", "kw", "prefix"), VITS)
def test_token_grid_of_a_vit_drops_the_prefix_tokens_and_pads_to_the_patch(name, kw, prefix):
    torch.manual_seed(0)
    bb = TimmBackbone(name, mode="tokens", **kw)
    assert bb.mode == "tokens"
    assert bb._prefix == prefix
    p = bb.strides[0]
    x = torch.rand(2, 3, 2 * p + 3, 4 * p - 1)  # not a multiple of the patch: padded right/bottom
    with torch.no_grad():
        out = bb(x)[-1]
        padded = torch.nn.functional.pad(x, (0, 1, 0, p - 3))
        tokens = bb.body.forward_features(padded)
    assert tokens.shape[1] == prefix + 3 * 4
    assert out.shape == (2, bb.out_channels[0], 3, 4)
    torch.testing.assert_close(out, tokens_to_map(tokens, (3 * p, 4 * p), p, prefix))
    # the first patch token of image 1 is pixel (0, 0) of its grid
    torch.testing.assert_close(out[1, :, 0, 0], tokens[1, prefix])


@pytest.mark.parametrize(("name", "kw", "prefix"), VITS[:2])
def test_vit_features_mode_takes_any_input_size(name, kw, prefix):
    bb = TimmBackbone(name, **kw)
    assert bb.mode == "features"
    p = bb.strides[-1]
    for h, w in ((2 * p, 3 * p), (3 * p + 5, 2 * p + 1)):
        with torch.no_grad():
            out = bb(torch.rand(1, 3, h, w))[-1]
        assert out.shape[-2:] == (-(-h // p), -(-w // p))  # timm pads to the patch: ceil


def test_cnn_features_and_a_fixed_size_transformer():
    bb = build_backbone("timm:resnet18", out_indices=(3, 4))
    out = bb(torch.rand(1, 3, 64, 96))
    assert [tuple(o.shape[1:]) for o in out] == [(256, 4, 6), (512, 2, 3)]
    cait = TimmBackbone("cait_xxs24_224", img_size=32, depth=1, depth_token_only=1)  # takes only its img_size
    assert cait._fixed_size == (32, 32)
    assert cait(torch.rand(1, 3, 48, 40))[-1].shape[-2:] == (2, 2)


def test_vit_weights_from_a_local_file_and_timm_download_refused_offline(tmp_path):
    torch.manual_seed(1)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    torch.save(ref.state_dict(), tmp_path / "vit.pth")
    bb = TimmBackbone("vit_tiny_patch16_224", tmp_path / "vit.pth", img_size=32, depth=1, mode="tokens")
    torch.testing.assert_close(bb.body.patch_embed.proj.weight, ref.patch_embed.proj.weight)
    torch.testing.assert_close(bb.body.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="WSSS_BLOCKS_OFFLINE=1 forbids downloads"):
        TimmBackbone("vit_tiny_patch16_224", "timm", img_size=32, depth=1)


def test_run_with_timm_pretrained_is_refused_offline_before_writing(tmp_path):
    from wsss_blocks.models.weights import WeightsUnavailableError, check_run_weights
    from wsss_blocks.train.reproduce import reproduce

    cfg = load_run_config("baseline_synthetic", ["cam.backbone=timm:resnet18", "cam.backbone_kwargs={}",
                                                 "cam.pretrained=timm"])
    with pytest.raises(WeightsUnavailableError, match="forbids downloads"):
        check_run_weights(cfg, ("cam",), log=lambda s: None)
    out = tmp_path / "run"
    with pytest.raises(WeightsUnavailableError):
        reproduce("baseline", out=out, overrides=["cam.backbone=timm:resnet18", "cam.backbone_kwargs={}",
                                                  "cam.pretrained=timm"], verbose=False)
    assert not (out / "cam").exists()
    with pytest.raises(ValueError, match="not a 'timm:<name>' backbone"):
        check_run_weights(load_run_config("baseline_synthetic", ["cam.pretrained=timm"]), ("cam",))


@pytest.mark.parametrize("backbone", ["timm:vit_tiny_patch16_224", "timm:resnet18"])
def test_cam_stage_and_pseudo_masks_with_a_timm_backbone(trainer_tiny, tmp_path, backbone):
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks

    kw = "{img_size: 32, depth: 2}" if "vit" in backbone else "{}"
    cfg = load_run_config("baseline_synthetic", [*trainer_tiny, f"cam.backbone={backbone}",
                                                 f"cam.backbone_kwargs={kw}", "pseudo.scales=[1.0, 0.5, 1.5]"])
    train_cam(cfg, tmp_path)
    summary = make_pseudo_masks(cfg, tmp_path)
    assert summary["num_masks"] == summary["num_written"] == cfg.data.synthetic.num_train
    assert 0.0 <= summary["pseudo_miou"] <= 1.0

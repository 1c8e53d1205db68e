"""The weights registry: every released initialisation a packaged config uses, fetched, verified and converted by name.

Each `WeightsEntry` names one file (``resnet50-19c8e357.pth``, ``mit_b1.pth``, ...) with where it
comes from (direct URLs, or an alternative source plus a converter, or only pages a person must open), its
published hash where one exists, its size, licence and the checks a correct copy passes (tensor names and
shapes after the entry's key map). Files live in ``$WSSS_BLOCKS_CACHE/weights/`` (default
``~/.cache/wsss_blocks/weights``) under their released names and are downloaded with
[`wsss_blocks.hub.download`][] (resumable, verified before the atomic move, ``WSSS_BLOCKS_OFFLINE`` and
``WSSS_BLOCKS_MIRROR`` honoured; a mirror is asked for the entry's own file name first).

**Hashes.** Where a public record gives one it is pinned: the SHA-256 prefix in torchvision's file names
(torch.hub convention), the MD5 list of itijyou/ademxapp (``models/checksum.md5``). Entries without a published
hash are *unpinned*: their first copy that passes the checks (size, parse or conversion, expected tensors) is
recorded in ``weights/recorded_hashes.json`` and every later copy must have the same SHA-256.

Names work wherever a checkpoint path does (``build_backbone(..., pretrained="resnet50-imagenet")``,
``cam.pretrained`` / ``seg.pretrained`` in run configs); `check_run_weights` resolves all weights of a run
before its first training step. The command line: ``wsss-blocks weights list | fetch | convert | path |
forget``.

Examples:
    >>> entry = get_weights_entry("resnet50-imagenet")
    >>> entry.file_name, entry.hash_label
    ('resnet50-19c8e357.pth', 'sha256:19c8e357')
    >>> get_weights_entry("mit-b1-imagenet").hash_label
    'unpinned'
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import shutil
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from wsss_blocks import hub

from .registry import get_key_map
from .state_dict import is_random_init, read_checkpoint

__all__ = [
    "WeightsEntry",
    "WeightsSource",
    "WeightsUnavailableError",
    "WEIGHTS",
    "get_weights_entry",
    "weights_dir",
    "resolve_weights",
    "fetch_weights",
    "convert_weights",
    "forget_weights",
    "recorded_hashes",
    "check_run_weights",
    "default_weights_for",
    "missing_init_hint",
    "registry_markdown",
]

Converter = Literal["caffemodel-deeplab", "hf-segformer"]


@dataclass(frozen=True)
class WeightsSource:
    """An alternative download that a converter turns into the entry's file.

    Attributes:
        file_name: name in ``weights/sources/`` (and under ``$WSSS_BLOCKS_MIRROR``).
        urls: direct download URLs, tried in order.
        converter: ``"caffemodel-deeplab"`` (`caffemodel_to_deeplab`) or
            ``"hf-segformer"`` (`hf_segformer_to_mit`).
        member: the file inside a zip archive to convert (``None``: the download itself).
        sha256, md5, size: published hash / size of the download, if any.
        note: where the source comes from.
    """

    file_name: str
    urls: tuple[str, ...]
    converter: Converter
    member: str | None = None
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    note: str = ""


@dataclass(frozen=True)
class WeightsEntry:
    """One released initialisation.

    Attributes:
        name: registry name (what configs and the command line use).
        file_name: the released file name; the file lives at ``weights_dir() / file_name``.
        title: one line on what it is.
        model: what it initialises in this library.
        origin: the upstream repository file (and line) that uses or publishes the file.
        license: licence / terms of the weights.
        urls: direct downloads of ``file_name`` (primary first, then mirrors).
        sha256: published SHA-256 (full) or its published prefix; ``None`` if none is published.
        md5: published MD5, if any.
        size: size in bytes, if a public record gives it.
        hash_source: the public record of the hash and size.
        file_format: ``"torch"`` (a PyTorch state dict) or ``"mxnet"`` (an MXNet ``.params`` file).
        key_map: registered key map from the file's names to the library's (used by the checks).
        check_keys: tensors a correct file has after ``key_map``: name -> shape.
        sources: alternatives that need a converter (tried after ``urls``).
        pages: pages a person must open when no script can download the file (Google Drive, Baidu, OneDrive).
        manual: extra instructions for those pages (extraction codes, which file to take).
        convertible: converters ``wsss-blocks weights convert`` accepts for a local file of another format.
    """

    name: str
    file_name: str
    title: str
    model: str
    origin: str
    license: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    hash_source: str = ""
    file_format: Literal["torch", "mxnet"] = "torch"
    key_map: str | None = None
    check_keys: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    sources: tuple[WeightsSource, ...] = ()
    pages: tuple[str, ...] = ()
    manual: str = ""
    convertible: tuple[Converter, ...] = ()

    @property
    def pinned(self) -> bool:
        """A hash is published (SHA-256, its prefix, or MD5)."""
        return bool(self.sha256 or self.md5)

    @property
    def hash_label(self) -> str:
        """``sha256:<hex>``, ``md5:<hex>`` or ``unpinned``."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return "unpinned"

    @property
    def automatic(self) -> bool:
        """A script can download it (direct URLs or a converted source)."""
        return bool(self.urls) or any(s.urls for s in self.sources)

    @property
    def path(self) -> Path:
        """Where the file lives (or must be put): ``$WSSS_BLOCKS_CACHE/weights/<file_name>``."""
        return weights_dir() / self.file_name


class WeightsUnavailableError(FileNotFoundError):
    """Weights that cannot be had: one line with the weight, the fetch command and the place for the file.

    Attributes:
        entry: the registry entry (``None`` for an unset config field).
        reason: why (download failures, offline mode, not in the cache).
    """

    def __init__(self, message: str, entry: WeightsEntry | None = None, reason: str = ""):
        super().__init__(message)
        self.entry, self.reason = entry, reason


# ----------------------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------------------
_R38_CHECK = {"conv1a.weight": (64, 3, 3, 3), "b7.conv_branch2b2.weight": (4096, 2048, 1, 1),
              "bn7.running_var": (4096,)}
_DEEPLAB_CHECK = {"conv1.weight": (64, 3, 7, 7), "layer3.22.conv3.weight": (1024, 256, 1, 1),
                  "layer4.2.conv3.weight": (2048, 512, 1, 1), "layer4.2.bn3.running_var": (2048,)}
_DEEPLAB_LICENSE = "DeepLab release terms (liangchiehchen.com/projects/DeepLab.html), research use"

WEIGHTS: dict[str, WeightsEntry] = {e.name: e for e in (
    WeightsEntry(
        name="resnet50-imagenet",
        file_name="resnet50-19c8e357.pth",
        title="torchvision ResNet-50, ImageNet-1k (original recipe, 76.1 % top-1)",
        model="cam.backbone resnet50 (torchvision layout)",
        origin="jiwoon-ahn/irn net/resnet50.py:6-8 (the IRN CAM network's init); torchvision<=0.12 "
               "models/resnet.py model_urls",
        license="torchvision (BSD-3-Clause); ImageNet terms of access",
        urls=("https://download.pytorch.org/models/resnet50-19c8e357.pth",
              "https://s3.amazonaws.com/pytorch/models/resnet50-19c8e357.pth"),
        sha256="19c8e357",
        size=102502400,
        hash_source="SHA-256 prefix in the file name (torch.hub convention, checked by "
                    "torch.hub.load_state_dict_from_url(check_hash=True)); size from timm's model index "
                    "(tv_resnet50, File Size 102502400)",
        check_keys={"conv1.weight": (64, 3, 7, 7), "layer4.2.conv3.weight": (2048, 512, 1, 1),
                    "fc.weight": (1000, 2048)},
    ),
    WeightsEntry(
        name="resnet101-imagenet",
        file_name="resnet101-5d3b4d8f.pth",
        title="torchvision ResNet-101, ImageNet-1k (original recipe, 77.4 % top-1)",
        model="resnet101 backbones in the torchvision layout (style: pytorch); no packaged config uses it",
        origin="torchvision<=0.12 models/resnet.py model_urls",
        license="torchvision (BSD-3-Clause); ImageNet terms of access",
        urls=("https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
              "https://s3.amazonaws.com/pytorch/models/resnet101-5d3b4d8f.pth"),
        sha256="5d3b4d8f",
        size=178728960,
        hash_source="SHA-256 prefix in the file name (torch.hub convention); size from timm's model index "
                    "(tv_resnet101, File Size 178728960)",
        check_keys={"conv1.weight": (64, 3, 7, 7), "layer3.22.conv3.weight": (1024, 256, 1, 1),
                    "fc.weight": (1000, 2048)},
    ),
    WeightsEntry(
        name="resnet38-imagenet",
        file_name="ilsvrc-cls_rna-a1_cls1000_ep-0001.params",
        title="ResNet-38 (model A1, Wu et al. 2019), ImageNet-1k, MXNet .params",
        model="cam.backbone resnet38d (read with NumPy; MXNet names mapped by resnet38_key_map)",
        origin="itijyou/ademxapp README 'Pre-trained models' (Model A1); jiwoon-ahn/psa README:33; "
               "PengtaoJiang/L2G scripts/train_l2g_sal_voc.py:98; halbielee/EPS script/voc12_eps.sh",
        license="itijyou/ademxapp (see its LICENSE); ImageNet terms of access",
        md5="ff21f45d6bf03284100dcbec571edfad",
        hash_source="itijyou/ademxapp models/checksum.md5",
        file_format="mxnet",
        key_map="resnet38",
        check_keys=_R38_CHECK,
        pages=("https://github.com/itijyou/ademxapp",
               "https://drive.google.com/file/d/1WvSkPfAtfPzyxcgG58a1RlRayMYb3FBc",
               "https://pan.baidu.com/share/init?surl=vP8O0RPJKXM0HPhVCn7wXw (Baidu code t4ce)"),
        manual="ademxapp's download link (cloudstor.aarnet.edu.au/plus/index.php/s/NOPhJ247fhVDnZH) is on a "
               "service that has closed; copies are shared by halbielee/EPS (README:79, Google Drive, "
               "'ImageNet-pretrained Model') and PengtaoJiang/L2G (README:42, Baidu code t4ce). Any copy with "
               "md5 ff21f45d6bf03284100dcbec571edfad is the released file.",
    ),
    WeightsEntry(
        name="resnet38-seam",
        file_name="resnet38_SEAM.pth",
        title="ResNet-38 + SEAM head (backbone, fc8, PCM f8_3/f8_4/f9) trained by SEAM on VOC 2012",
        model="PMM's CAM network (SEAMNet): backbone, fc8 and PCM, key map seam_resnet38",
        origin="Eli-YiLi/PMM run.py:44 (--weights models/resnet38_SEAM.pth), pipeline/train_cam.py:91-97 "
               "(strict=False load: fc8 and PCM included); YudeWang/SEAM README:27",
        license="Eli-YiLi/PMM and YudeWang/SEAM releases (MIT)",
        key_map="resnet38",
        check_keys={"conv1a.weight": (64, 3, 3, 3), "b7.conv_branch2b2.weight": (4096, 2048, 1, 1)},
        pages=("https://1drv.ms/f/s!Agn5nXKXMkK5aigB0g238YxuTxs",
               "https://pan.baidu.com/s/1GL3zXZuapuXmH9E7Xy8-Fg (Baidu code mtci)"),
        manual="Eli-YiLi/PMM README:25 'pretrained models' folder (OneDrive, or Baidu with code mtci): take "
               "resnet38_SEAM.pth. SEAM's own release folder (YudeWang/SEAM README:27, Google Drive "
               "1jWsV5Yev-PwKgvvtUM3GnY0ogb50-qKa or Baidu code 6nmo) holds SEAM's trained model.",
    ),
    WeightsEntry(
        name="scalenet101-imagenet",
        file_name="scalenet101.pth",
        title="ScaleNet-101, ImageNet-1k (20.82 % top-1 error)",
        model="PMM's stage-C CAM network (SEAMNet on scalenet101): the backbone; its ImageNet fc is ignored",
        origin="Eli-YiLi/PMM run.py:125 (--weights models/scalenet/weights/scalenet101.pth), "
               "network/scalenet_SEAM.py ScaleNet101_SEAM (strict=False load); Eli-YiLi/ScaleNet README "
               "'Trained models'",
        license="Eli-YiLi/ScaleNet release (see its repository); ImageNet terms of access",
        check_keys={"conv1.weight": (64, 3, 7, 7), "layer1.0.conv2.0.weight": (61, 64, 3, 3),
                    "layer3.22.conv3.weight": (1024, 341, 1, 1), "layer4.2.conv3.weight": (2048, 682, 1, 1)},
        pages=("https://pan.baidu.com/s/1NOjFWzkAVmMNkZh6jIcMzA",
               "https://1drv.ms/f/s!Agn5nXKXMkK5aigB0g238YxuTxs",
               "https://pan.baidu.com/s/1GL3zXZuapuXmH9E7Xy8-Fg (Baidu code mtci)"),
        manual="Eli-YiLi/ScaleNet README 'Trained models' (BaiduYun, extract code f1c5): take "
               "weights/scalenet101.pth; the same file is models/scalenet/weights/scalenet101.pth in the Eli-YiLi/PMM "
               "README:25 'pretrained models' folder (OneDrive, or Baidu with code mtci). No public hash or direct "
               "download exists: the first copy that passes the checks is recorded.",
    ),
    WeightsEntry(
        name="res2net101-v1b-imagenet",
        file_name="res2net101_v1b_26w_4s-0812c246.pth",
        title="Res2Net-101 v1b 26w×4s, ImageNet-1k (gasvn/Res2Net-PretrainedModels)",
        model="seg.backbone res2net101_v1b (PMM's PSPNet backbone; its ImageNet fc is ignored)",
        origin="Eli-YiLi/WSSS_MMSeg configs/pspnet_wsss/pspnet_res2net_20k_voc12aug_pus.py:3 "
               "(pretrained='data/models/res2net101_v1b_26w_4s-0812c246.pth'); Res2Net/Res2Net-PretrainedModels "
               "res2net_v1b.py model_urls",
        license="Res2Net release (Res2Net/Res2Net-PretrainedModels); ImageNet terms of access",
        urls=("https://shanghuagao.oss-cn-beijing.aliyuncs.com/res2net/res2net101_v1b_26w_4s-0812c246.pth",),
        sha256="0812c246",
        hash_source="SHA-256 prefix in the file name (torch.hub naming convention of the Res2Net release's "
                    "model_urls; the release loads it with model_zoo.load_url, which does not check it)",
        check_keys={"conv1.0.weight": (32, 3, 3, 3), "layer3.22.conv3.weight": (1024, 416, 1, 1),
                    "layer4.2.conv3.weight": (2048, 832, 1, 1), "layer4.2.bn3.running_var": (2048,)},
        pages=("https://1drv.ms/f/s!Agn5nXKXMkK5aigB0g238YxuTxs",
               "https://pan.baidu.com/s/1GL3zXZuapuXmH9E7Xy8-Fg (Baidu code mtci)"),
        manual="Also in the Eli-YiLi/PMM README:25 'pretrained models' folder (OneDrive, or Baidu with code mtci).",
    ),
    WeightsEntry(
        name="mit-b1-imagenet",
        file_name="mit_b1.pth",
        title="SegFormer MiT-B1 encoder, ImageNet-1k",
        model="cam.backbone mit_b1 (TSCD/AFA encoder; the head.* classifier is ignored)",
        origin="NVlabs/SegFormer README 'Training' (pretrained/mit_b1.pth); rulixiang/afa "
               "wetr/model_attn_aff.py:23-27; Rongtao-Xu/RepresentationLearning SCD-AAAI2023/network/TSCD_model.py:23",
        license="NVIDIA Source Code License for SegFormer (non-commercial research and evaluation use)",
        check_keys={"patch_embed1.proj.weight": (64, 3, 7, 7), "block1.0.attn.kv.weight": (128, 64),
                    "block4.1.mlp.fc2.weight": (512, 2048), "norm4.weight": (512,)},
        sources=(WeightsSource(
            file_name="nvidia-mit-b1-pytorch_model.bin",
            urls=("https://huggingface.co/nvidia/mit-b1/resolve/main/pytorch_model.bin",),
            converter="hf-segformer",
            note="the Hugging Face copy nvidia/mit-b1 (transformers' convert_segformer_original_to_pytorch.py "
                 "output), renamed back to the SegFormer names"),),
        pages=("https://drive.google.com/drive/folders/1b7bwrInTW4VLEm27YawHOAMSMikga2Ia",),
        manual="NVlabs/SegFormer README 'Training': Google Drive or OneDrive folder of ImageNet-1k weights; "
               "take mit_b1.pth.",
        convertible=("hf-segformer",),
    ),
    WeightsEntry(
        name="deeplabv1-resnet101-coco",
        file_name="deeplabv1_resnet101-coco.pth",
        title="DeepLab ResNet-101 caffe init trained on MS-COCO (init.caffemodel), deeplab-pytorch names",
        model="seg.backbone resnet101, style caffe (DeepLabV2; key map deeplab_pytorch, its fc is dropped)",
        origin="kazuto1011/deeplab-pytorch scripts/setup_caffemodels.sh:4-10 and convert.py:176-179 "
               "(`python convert.py --dataset coco`); configs/voc12.yaml:34 INIT_MODEL",
        license=_DEEPLAB_LICENSE,
        key_map="deeplab_pytorch",
        check_keys=_DEEPLAB_CHECK,
        sources=(WeightsSource(
            file_name="prototxt_and_model.zip",
            urls=("http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/prototxt_and_model.zip",),
            converter="caffemodel-deeplab",
            member="init.caffemodel",
            note="DeepLab-v2 release archive (over 1 GB; deeplab-pytorch README), whose init.caffemodel is "
                 "converted like deeplab-pytorch convert.py"),),
        manual="Or convert deeplab-pytorch's init.caffemodel yourself with `wsss-blocks weights convert "
               "deeplabv1-resnet101-coco init.caffemodel`, or place the deeplabv1_resnet101-coco.pth that "
               "deeplab-pytorch's convert.py writes.",
        convertible=("caffemodel-deeplab",),
    ),
    WeightsEntry(
        name="deeplabv1-resnet101-imagenet",
        file_name="deeplabv1_resnet101-imagenet.pth",
        title="DeepLab ResNet-101 caffe init, ImageNet-1k only, deeplab-pytorch names",
        model="seg.backbone resnet101, style caffe (DeepLabV2; key map deeplab_pytorch)",
        origin="PengtaoJiang/L2G deeplab-pytorch/configs/coco_resnet_dplv2.yaml:34 and README:85",
        license=_DEEPLAB_LICENSE,
        key_map="deeplab_pytorch",
        check_keys=_DEEPLAB_CHECK,
        pages=("https://drive.google.com/file/d/1huoE5TcdUqLRFjVPaYSs2_sg2ehv9Z_s",),
        manual="PengtaoJiang/L2G README:85 'pretrained models' (Google Drive): take "
               "deeplabv1_resnet101-imagenet.pth. Alternatively convert the MSRA ImageNet ResNet-101 caffemodel "
               "(KaimingHe/deep-residual-networks ResNet-101-model.caffemodel, same layer names) with "
               "`wsss-blocks weights convert deeplabv1-resnet101-imagenet ResNet-101-model.caffemodel`; that "
               "it equals L2G's file is not verified.",
        convertible=("caffemodel-deeplab",),
    ),
)}
"""The registry: every released initialisation the configs name, by name (``wsss-blocks weights list``)."""


def get_weights_entry(name: str) -> WeightsEntry:
    """The registry entry ``name``; a ``ValueError`` lists the known names and the closest one."""
    if not isinstance(name, str):
        raise TypeError(f"weights name must be a str, got {type(name).__name__}")
    if name in WEIGHTS:
        return WEIGHTS[name]
    close = difflib.get_close_matches(name, list(WEIGHTS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown weights {name!r} (known: {', '.join(WEIGHTS)}){hint}")


def weights_dir() -> Path:
    """``$WSSS_BLOCKS_CACHE/weights`` (default ``~/.cache/wsss_blocks/weights``)."""
    return hub.cache_dir("weights")


# ----------------------------------------------------------------------------------------------------------
# recorded hashes (unpinned entries: the first verified copy is the reference)
# ----------------------------------------------------------------------------------------------------------
def _records_path() -> Path:
    return weights_dir() / "recorded_hashes.json"


def recorded_hashes() -> dict[str, dict[str, Any]]:
    """``{file_name: {"sha256", "size", "mtime_ns", "source", "recorded"}}`` of this cache."""
    p = _records_path()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} is not valid JSON ({e}); delete it to record the hashes again") from None
    return dict(data.get("files", {}))


def _write_records(files: Mapping[str, Any]) -> None:
    from wsss_blocks.data.io import atomic_write

    with atomic_write(_records_path(), "w") as f:
        json.dump({"version": 1, "files": dict(files)}, f, indent=1, sort_keys=True)


def _record(file_name: str, path: Path | None, sha256: str, size: int, source: str) -> None:
    recs = recorded_hashes()
    old = recs.get(file_name, {})
    recs[file_name] = {
        "sha256": sha256, "size": int(size), "source": source if not old else old.get("source", source),
        "recorded": old.get("recorded") or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mtime_ns": path.stat().st_mtime_ns if path is not None and path.exists() else None,
    }
    _write_records(recs)


def forget_weights(name: str, *, delete_file: bool = False) -> list[str]:
    """Drop the recorded hash of entry ``name`` (and of its sources); with ``delete_file`` also its file.

    The next copy of an unpinned entry then becomes the new reference. Returns the file names forgotten.
    """
    e = get_weights_entry(name)
    recs = recorded_hashes()
    names = [n for n in (e.file_name, *(s.file_name for s in e.sources)) if n in recs]
    for n in names:
        del recs[n]
    _write_records(recs)
    if delete_file:
        e.path.unlink(missing_ok=True)
    return names


# ----------------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------------
def _check_state_dict(e: WeightsEntry, sd: Mapping[str, Tensor], what: str) -> None:
    fn = get_key_map(e.key_map)
    mapped = {}
    for k, v in sd.items():
        new = fn(k)
        if new is not None:
            mapped[new] = v
    for key, shape in e.check_keys.items():
        if key not in mapped:
            raise ValueError(f"{what} is not the {e.name} checkpoint: it has no tensor {key!r} (after the "
                             f"{e.key_map or 'identity'} key map; it has {len(mapped)} tensors, e.g. "
                             f"{sorted(mapped)[:4]})")
        if tuple(mapped[key].shape) != tuple(shape):
            raise ValueError(f"{what} is not the {e.name} checkpoint: {key} has shape "
                             f"{tuple(mapped[key].shape)}, expected {tuple(shape)}")


def _check_file(e: WeightsEntry, path: Path) -> None:
    try:
        sd = read_checkpoint(path)
    except (ValueError, RuntimeError, OSError) as err:
        raise ValueError(f"{path} is not a readable {e.file_format} checkpoint for {e.name}: {err}") from None
    _check_state_dict(e, sd, str(path))


def _verify_cached(e: WeightsEntry, path: Path, *, full: bool = False) -> None:
    """Check a file already at ``e.path``: pinned hash, recorded hash, and (first use) its tensors."""
    recs = recorded_hashes()
    rec = recs.get(e.file_name)
    st = path.stat()
    if rec and not full and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        return
    dig = hub.verify_file(path, sha256=e.sha256, md5=e.md5, size=e.size, what=f"{e.name} ({path})")
    if rec and rec["sha256"] != dig["sha256"]:
        raise hub.ChecksumError(
            f"{e.name} ({path}) has sha256 {dig['sha256']}, but the copy recorded on {rec.get('recorded')} had "
            f"{rec['sha256']} (no hash is published for it, so the first verified copy is the reference); if you "
            f"replaced the file on purpose run `wsss-blocks weights forget {e.name}`",
            path=path, expected=rec["sha256"], actual=dig["sha256"])
    if not rec:
        _check_file(e, path)
    _record(e.file_name, path, dig["sha256"], st.st_size, (rec or {}).get("source", "placed in the cache"))


def _unavailable(e: WeightsEntry, reason: str, field_name: str | None = None) -> WeightsUnavailableError:
    where = f" for {field_name}" if field_name else ""
    how = f"`wsss-blocks weights fetch {e.name}`"
    if e.automatic:
        get = f"fetch them with {how} (needs internet) or put {e.file_name} at {e.path}"
    else:
        page = " or ".join(e.pages) if e.pages else "the release page (see `wsss-blocks weights list`)"
        get = (f"no script can download them: get {e.file_name} from {page} and put it at {e.path}, "
               f"then {how} verifies it (details: the Weights page of the docs)")
    reason = " ".join(reason.split())
    return WeightsUnavailableError(f"weights {e.name!r}{where} are not available ({reason}); {get}", e, reason)


# ----------------------------------------------------------------------------------------------------------
# fetch / resolve / convert
# ----------------------------------------------------------------------------------------------------------
def _expected_sha(file_name: str, published: str | None) -> str | None:
    if published:
        return published
    rec = recorded_hashes().get(file_name)
    return rec["sha256"] if rec else None


def _save_state_dict(sd: Mapping[str, Tensor], path: Path) -> None:
    from wsss_blocks.data.io import atomic_write

    with atomic_write(path, "wb") as f:
        torch.save(dict(sd), f)


def _convert(converter: Converter, src: Path, member: str | None = None) -> dict[str, Tensor]:
    from .converters import caffemodel_to_deeplab, hf_segformer_to_mit, read_caffemodel

    if converter == "caffemodel-deeplab":
        if zipfile.is_zipfile(src) and not _is_torch_zip(src):
            want = member or "init.caffemodel"
            with zipfile.ZipFile(src) as z:
                names = [n for n in z.namelist() if n == want or n.rsplit("/", 1)[-1] == want]
                if not names:
                    raise ValueError(f"{src} has no {want} (members: {z.namelist()[:10]})")
                return caffemodel_to_deeplab(read_caffemodel(z.read(names[0])), heads=False)
        return caffemodel_to_deeplab(read_caffemodel(src), heads=False)
    if converter == "hf-segformer":
        return hf_segformer_to_mit(read_checkpoint(src))
    raise ValueError(f"unknown converter {converter!r}")


def _is_torch_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())


def _fetch_source(e: WeightsEntry, s: WeightsSource, progress: bool) -> Path:
    src = weights_dir() / "sources" / s.file_name
    hub.download(s.urls, src, sha256=_expected_sha(s.file_name, s.sha256), md5=s.md5, size=s.size,
                 progress=progress, desc=f"{e.name}: {s.file_name}")
    try:
        sd = _convert(s.converter, src, s.member)
        _check_state_dict(e, sd, f"{s.file_name} converted with {s.converter}")
    except (ValueError, RuntimeError, OSError, KeyError) as err:
        raise ValueError(f"{src} could not be converted ({err}); delete it to download it again") from None
    _save_state_dict(sd, e.path)
    dig = hub.file_digests(src)
    _record(s.file_name, None, dig["sha256"], src.stat().st_size, s.urls[0] if s.urls else "mirror")
    out = hub.file_digests(e.path)
    _record(e.file_name, e.path, out["sha256"], e.path.stat().st_size,
            f"converted ({s.converter}) from {s.file_name}")
    src.unlink()
    return e.path


def fetch_weights(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Make sure entry ``name`` is in the cache, verified; download (and convert) it if needed.

    An existing file is fully re-verified (pinned or recorded hash). Otherwise the entry's own file is
    downloaded (``$WSSS_BLOCKS_MIRROR/<file name>`` first, then its URLs), then each converted source is tried.

    Args:
        name: registry name.
        progress: tqdm bars.
        force: download again even if a verified copy is in the cache (replaced only by a verified one).

    Returns:
        The file's path in the cache.

    Raises:
        WeightsUnavailableError: nothing delivered a verified copy (the reasons, the fetch command and the
            place for a manually downloaded file are in the message); also in offline mode.
        hub.ChecksumError: the file in the cache does not match the pinned or recorded hash.
    """
    e = get_weights_entry(name)
    path = e.path
    if path.is_file() and not force:
        _verify_cached(e, path, full=True)
        return path
    if hub.is_offline():
        raise _unavailable(e, f"not in the cache and {hub.OFFLINE_ENV}=1 forbids downloading")
    reasons: list[str] = []
    if e.urls or hub.mirror_urls(e.file_name):
        try:
            hub.download(e.urls, path, sha256=_expected_sha(e.file_name, e.sha256), md5=e.md5, size=e.size,
                         progress=progress, force=force, desc=e.name)
        except (hub.DownloadError, hub.ChecksumError) as err:
            reasons.append(str(err))
        else:
            try:
                _check_file(e, path)
            except ValueError as err:
                path.unlink(missing_ok=True)
                reasons.append(f"{err}; the download was deleted")
            else:
                dig = hub.file_digests(path)
                _record(e.file_name, path, dig["sha256"], path.stat().st_size, "download")
                return path
    for s in e.sources:
        try:
            return _fetch_source(e, s, progress)
        except (hub.DownloadError, hub.ChecksumError, ValueError, OSError) as err:
            reasons.append(str(err))
    if not reasons:
        reasons.append("no direct download exists")
    raise _unavailable(e, "; ".join(reasons))


def resolve_weights(source: str | os.PathLike, *, download: bool = True, progress: bool = True,
                    field_name: str | None = None) -> Path:
    """The local file of ``source``: an existing path, or a registry name (fetched and verified if needed).

    Args:
        source: a path or a registry name (``wsss-blocks weights list``).
        download: fetch a registry file that is not in the cache (else raise).
        progress: tqdm bars while downloading.
        field_name: config field named in errors (e.g. ``"cam.pretrained"``).

    Raises:
        FileNotFoundError: neither an existing file nor a registry name.
        WeightsUnavailableError: a registry file that cannot be had (one line: what, how, where).
    """
    label = field_name or "pretrained"
    if isinstance(source, os.PathLike) or not isinstance(source, str) or source not in WEIGHTS:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"{label} must be a path or a weights name, got {type(source).__name__}")
        path = Path(source).expanduser()
        if path.is_file():
            return path
        close = difflib.get_close_matches(os.fspath(source), list(WEIGHTS), n=1)
        hint = f"; did you mean the registry name {close[0]!r}?" if close else ""
        raise FileNotFoundError(f"{label}={os.fspath(source)!r} is neither a file nor a weights name (see "
                                f"`wsss-blocks weights list`: {', '.join(sorted(WEIGHTS))}){hint}")
    e = WEIGHTS[source]
    if e.path.is_file():
        _verify_cached(e, e.path)
        return e.path
    if not download:
        raise _unavailable(e, "not in the cache", field_name)
    try:
        return fetch_weights(e.name, progress=progress)
    except WeightsUnavailableError as err:
        if field_name:
            raise _unavailable(e, err.reason, field_name) from None
        raise


def _sniff(path: Path) -> str:
    lower = path.name.lower()
    if lower.endswith(".caffemodel"):
        return "caffemodel"
    if lower.endswith(".safetensors"):
        return "safetensors"
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) == 8 and int.from_bytes(head, "little") == 0x112:
        return "mxnet"
    if zipfile.is_zipfile(path) and not _is_torch_zip(path):
        return "archive"
    return "torch"


def convert_weights(name: str, source: str | os.PathLike, *, out: str | os.PathLike | None = None) -> Path:
    """Put a local copy of entry ``name`` into the cache, converting it first when it is in another format.

    * ``source`` in the entry's own format (e.g. a ``.params`` for ``resnet38-imagenet``, a ``.pth`` for
      ``resnet38-seam``): verified (pinned hash, recorded hash, expected tensors) and copied into the cache.
    * ``source`` in a format one of the entry's converters reads (``entry.convertible``): a ``.caffemodel``
      or the DeepLab zip for the DeepLab entries, a Hugging Face ``pytorch_model.bin`` / ``.safetensors`` for
      ``mit-b1-imagenet``: converted, checked and written as the entry's file.

    With ``out`` the result is written there as a PyTorch state dict **in the library's key names** instead
    (e.g. ResNet-38 ``.params`` -> ``res38d``-style names), and the cache is not touched.

    Returns:
        The written file.
    """
    e = get_weights_entry(name)
    src = Path(source).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {str(src)!r}")
    kind = _sniff(src)
    own = {"torch": ("torch", "safetensors"), "mxnet": ("mxnet",)}[e.file_format]
    sd: dict[str, Tensor] | None = None
    if kind in ("caffemodel", "archive"):
        if "caffemodel-deeplab" not in e.convertible:
            raise ValueError(f"{e.name} is not made from a caffemodel; {src.name} ({kind}) cannot be converted to it")
        sd = _convert("caffemodel-deeplab", src)
    elif kind in own:
        raw = read_checkpoint(src)
        if "hf-segformer" in e.convertible and any(k.startswith(("segformer.", "encoder.patch_embeddings"))
                                                  for k in raw):
            sd = _convert("hf-segformer", src)
        elif out is None:
            if e.pinned:
                hub.verify_file(src, sha256=e.sha256, md5=e.md5, size=e.size, what=str(src))
            _check_state_dict(e, raw, str(src))
            rec = recorded_hashes().get(e.file_name)
            dig = hub.file_digests(src)
            if rec and rec["sha256"] != dig["sha256"]:
                raise hub.ChecksumError(
                    f"{src} has sha256 {dig['sha256']}, but the copy of {e.name} recorded on {rec.get('recorded')} "
                    f"had {rec['sha256']}; run `wsss-blocks weights forget {e.name}` to make this one the reference",
                    path=src, expected=rec["sha256"], actual=dig["sha256"])
            e.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = e.path.with_name(e.path.name + ".part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, e.path)
            _record(e.file_name, e.path, dig["sha256"], e.path.stat().st_size, f"copied from {src}")
            return e.path
        else:
            sd = raw
    else:
        raise ValueError(f"{src.name} looks like a {kind} file; {e.name} takes a {e.file_format} file"
                         + (f" or one its converters read ({', '.join(e.convertible)})" if e.convertible else ""))
    _check_state_dict(e, sd, f"{src} converted")
    if out is not None:
        fn = get_key_map(e.key_map)
        lib = {k2: v for k2, v in ((fn(k), v) for k, v in sd.items()) if k2 is not None}
        dest = Path(out).expanduser()
        _save_state_dict(lib, dest)
        return dest
    rec = recorded_hashes().get(e.file_name)
    if e.pinned or rec:
        raise ValueError(f"{e.name} has a {'published' if e.pinned else 'recorded'} hash for its own file, which a "
                         f"conversion cannot reproduce; pass out= to write the converted state dict elsewhere"
                         + ("" if e.pinned else f", or run `wsss-blocks weights forget {e.name}` first"))
    _save_state_dict(sd, e.path)
    dig = hub.file_digests(e.path)
    _record(e.file_name, e.path, dig["sha256"], e.path.stat().st_size, f"converted from {src.name}")
    return e.path


# ----------------------------------------------------------------------------------------------------------
# run configs
# ----------------------------------------------------------------------------------------------------------
_RESNET38 = ("resnet38d", "resnet38", "wide_resnet38")


def default_weights_for(backbone: str, *, stage: str = "cam", style: str = "pytorch") -> str | None:
    """The released initialisation of ``backbone`` in the packaged configs (``None`` if there is none).

    Examples:
        >>> default_weights_for("resnet38d"), default_weights_for("resnet101", stage="seg", style="caffe")
        ('resnet38-imagenet', 'deeplabv1-resnet101-coco')
        >>> default_weights_for("tiny") is None
        True
    """
    if backbone in _RESNET38:
        return "resnet38-imagenet"
    if backbone == "resnet50":
        return "resnet50-imagenet"
    if backbone == "resnet101":
        return "deeplabv1-resnet101-coco" if stage == "seg" and style == "caffe" else "resnet101-imagenet"
    if backbone == "mit_b1":
        return "mit-b1-imagenet"
    if backbone in ("res2net101_v1b", "res2net101"):
        return "res2net101-v1b-imagenet"
    if backbone == "scalenet101":
        return "scalenet101-imagenet"
    return None


def _fields(cfg: Any, stages: Sequence[str]) -> list[tuple[str, Any, str, str]]:
    out = []
    if "cam" in stages:
        # a method may build other networks too (PMM's stage C) and may not build the cam.backbone one at all
        method_cls = cfg.method_class() if hasattr(cfg, "method_class") else None
        method_cfg = cfg.method_config() if method_cls is not None else None
        if method_cls is None or getattr(method_cls, "uses_cam_backbone", lambda c: True)(method_cfg):
            out.append(("cam.pretrained", cfg.cam.pretrained, cfg.cam.backbone, "cam"))
        if method_cls is not None:
            for field_name, value, backbone in getattr(method_cls, "extra_weights", lambda c: [])(method_cfg):
                out.append((field_name, value, backbone, "cam"))
    if "seg" in stages and cfg.seg.source == "deeplab":
        out.append(("seg.pretrained", cfg.seg.pretrained, cfg.seg.backbone, "seg"))
    return out


_REPORTED: set[str] = set()


def check_run_weights(cfg: Any, stages: Sequence[str] = ("cam", "seg"), *, download: bool = True,
                      progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Path | None]:
    """Resolve and verify every initialisation of a run before its first training step.

    For ``cam.pretrained`` (unless the method does not build that network), the method's other
    initialisations (``CAMMethod.extra_weights``, e.g. PMM's ``method_args.stage_c_pretrained``) and (with
    ``seg.source: deeplab``) ``seg.pretrained``:

    * a registry name is fetched if needed and verified; a path must exist;
    * ``none`` trains from random weights, with a warning on real data when the backbone has a released
      initialisation;
    * ``null`` on real data (``data.dataset`` other than ``synthetic``) for a backbone that has a released
      initialisation is refused: the config must name the weights, or say ``none`` explicitly;
    * ``synthetic`` (synthetic data only) is skipped and maps to ``None`` here: the trainer pretrains that
      backbone on a disjoint synthetic set when it builds the network (`wsss_blocks.train.synthetic_pretrain`).
    * ``timm`` (``timm:<name>`` backbones only) lets timm download the model's own weights when the network is
      built; refused when ``WSSS_BLOCKS_OFFLINE=1``.

    Args:
        cfg: a `RunConfig`.
        stages: which of ``"cam"``, ``"seg"`` to check.
        download: fetch missing registry files.
        progress: tqdm bars while downloading.
        log: called with one line per resolved weight (default: print to stderr, once per process).

    Returns:
        ``{"cam.pretrained": path or None, ...}``.

    Raises:
        WeightsUnavailableError: one line naming the weight, the fetch command and the place for the file.
        FileNotFoundError: a path that does not exist.
    """
    say = log if log is not None else (lambda s: print(s, file=sys.stderr, flush=True))
    real = cfg.data.dataset != "synthetic"
    result: dict[str, Path | None] = {}
    for field_name, value, backbone, stage in _fields(cfg, stages):
        if value == "synthetic" and not real:  # made (once, cached) by the trainer when it builds the network
            result[field_name] = None
            continue
        if value == "timm":  # timm fetches the model's own weights (TimmBackbone)
            if not str(backbone).startswith("timm:"):
                raise ValueError(f"{field_name}=timm lets timm download a timm model's weights; backbone "
                                 f"{backbone!r} is not a 'timm:<name>' backbone")
            if hub.is_offline():
                raise WeightsUnavailableError(f"{field_name}=timm: timm would download the weights of {backbone}, but "
                                              f"{hub.OFFLINE_ENV}=1 forbids downloads; save them to a file and set "
                                              f"{field_name} to its path")
            result[field_name] = None
            continue
        style = getattr(cfg.seg, "style", "caffe") if stage == "seg" else "pytorch"
        default = default_weights_for(backbone, stage=stage, style=style)
        if is_random_init(value):
            if real and default is not None:
                if value is None:
                    raise WeightsUnavailableError(
                        f"{field_name} is not set for backbone {backbone} on {cfg.data.dataset} data: name the "
                        f"weights (e.g. --set {field_name}={default}; fetch with `wsss-blocks weights fetch "
                        f"{default}`, file at {get_weights_entry(default).path}) or set {field_name}=none to train "
                        "from random weights")
                warnings.warn(f"{field_name}=none: {backbone} starts from random weights; the released recipe "
                              f"starts from {default!r}, so expect much lower mIoU or a diverging loss",
                              UserWarning, stacklevel=2)
            result[field_name] = None
            continue
        path = resolve_weights(value, download=download, progress=progress, field_name=field_name)
        result[field_name] = path
        line = f"weights: {field_name} = {value} -> {path} (verified)"
        if log is not None or line not in _REPORTED:  # the stages of one run check again: say it once
            _REPORTED.add(line)
            say(line)
    return result


def missing_init_hint(config: Mapping[str, Any], stage: str) -> str:
    """A note for divergence errors of a backbone trained from random weights.

    Given when ``stage`` trains a backbone that has a released initialisation from random weights (``""``
    otherwise). ``config`` is the run config as a dict.

    Examples:
        >>> missing_init_hint({"cam": {"backbone": "resnet50", "pretrained": None}}, "cam")[:47]
        '; cam.pretrained is None: resnet50 started from'
    """
    sec = config.get(stage) if isinstance(config, Mapping) else None
    if not isinstance(sec, Mapping) or not is_random_init(sec.get("pretrained")):
        return ""
    backbone = str(sec.get("backbone", ""))
    style = str(sec.get("style", "caffe" if stage == "seg" else "pytorch"))
    default = default_weights_for(backbone, stage=stage, style=style)
    if default is None:
        return ""
    return (f"; {stage}.pretrained is {sec.get('pretrained')!r}: {backbone} started from random weights, while "
            f"the released recipe fine-tunes {default!r} (set {stage}.pretrained={default})")


# ----------------------------------------------------------------------------------------------------------
# documentation
# ----------------------------------------------------------------------------------------------------------
def _size_label(size: int | None) -> str:
    return f"{size:,}" if size is not None else "unknown"


def registry_markdown() -> str:
    """The registry as a Markdown table (``docs/weights.md`` holds a copy that a test compares)."""
    rows = ["| name | file | hash | size (bytes) | download | origin |", "|---|---|---|---|---|---|"]
    for e in WEIGHTS.values():
        if e.urls:
            how = "automatic"
        elif e.sources:
            how = f"automatic ({e.sources[0].converter} conversion)"
        else:
            how = "manual"
        h = f"`{e.hash_label}`" if e.pinned else "unpinned"
        rows.append(f"| `{e.name}` | `{e.file_name}` | {h} | {_size_label(e.size)} | {how} | {e.origin} |")
    return "\n".join(rows)

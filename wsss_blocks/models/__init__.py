"""Models for the reference trainer: backbones by name, ResNet-38, MiT, Res2Net, ScaleNet, heads, networks.

Importing this package needs only torch; torchvision and timm are imported when a backbone of theirs is
built. ``pretrained=`` takes a local file, a state dict or the name of a released initialisation of the
weights registry ([`wsss_blocks.models.weights`][]: fetched, verified and converted into the cache on first
use); MXNet ``.params`` and Caffe ``.caffemodel`` files are read without those frameworks
([`wsss_blocks.models.converters`][]).
"""

from .backbones import (
    LoadReport,
    TimmBackbone,
    TinyBackbone,
    TorchvisionResNet,
    available_backbones,
    build_backbone,
    build_frozen_backbone,
    deeplab_pytorch_key_map,
    load_pretrained,
    read_state_dict,
    set_bn_eval,
)
from .heads import ASPPv2, CAMHead, DeepLabV3PlusHead, SegFormerHead, global_pool
from .irnet import BoundaryHead, IRNet, irnet_key_map
from .mit import MIT_CONFIGS, MixTransformer, mit_b0, mit_b1, mit_b2, mit_b3, mit_b4, mit_b5, mit_tiny
from .networks import CAMNet, DeepLabV2, DeepLabV3Plus, SegFormer, SMAFNet, msc_forward, param_groups
from .pcm import L2GNet, PixelCorrelation, SEAMNet, seam_pcm_input
from .pspnet import ConvModule, FCNHead, PSPHead, PSPNet, slide_inference
from .registry import BackboneEntry, backbone_entry, get_key_map, register_backbone, register_key_map
from .res2net import Bottle2neck, Res2Net, res2net101_v1b
from .resnet38 import ResNet38, load_resnet38, mxnet_resnet38_name, resnet38_key_map, seam_resnet38_key_map
from .scalenet import SCALENET101_STRUCTURE, SABlock, ScaleNet, scalenet101
from .state_dict import is_random_init, read_checkpoint
from .weights import (
    WEIGHTS,
    WeightsEntry,
    WeightsUnavailableError,
    check_run_weights,
    convert_weights,
    fetch_weights,
    get_weights_entry,
    resolve_weights,
)

__all__ = [
    "LoadReport",
    "TimmBackbone",
    "TinyBackbone",
    "TorchvisionResNet",
    "available_backbones",
    "build_backbone",
    "build_frozen_backbone",
    "BackboneEntry",
    "backbone_entry",
    "register_backbone",
    "deeplab_pytorch_key_map",
    "get_key_map",
    "is_random_init",
    "load_pretrained",
    "read_state_dict",
    "read_checkpoint",
    "register_key_map",
    "set_bn_eval",
    "ASPPv2",
    "CAMHead",
    "DeepLabV3PlusHead",
    "SegFormerHead",
    "global_pool",
    "BoundaryHead",
    "IRNet",
    "irnet_key_map",
    "MIT_CONFIGS",
    "MixTransformer",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
    "mit_tiny",
    "CAMNet",
    "SMAFNet",
    "L2GNet",
    "SEAMNet",
    "PixelCorrelation",
    "seam_pcm_input",
    "DeepLabV2",
    "DeepLabV3Plus",
    "SegFormer",
    "msc_forward",
    "param_groups",
    "ConvModule",
    "FCNHead",
    "PSPHead",
    "PSPNet",
    "slide_inference",
    "Bottle2neck",
    "Res2Net",
    "res2net101_v1b",
    "SCALENET101_STRUCTURE",
    "SABlock",
    "ScaleNet",
    "scalenet101",
    "ResNet38",
    "load_resnet38",
    "mxnet_resnet38_name",
    "resnet38_key_map",
    "seam_resnet38_key_map",
    "WEIGHTS",
    "WeightsEntry",
    "WeightsUnavailableError",
    "check_run_weights",
    "convert_weights",
    "fetch_weights",
    "get_weights_entry",
    "resolve_weights",
]

"""Reference trainer: CAM stage, pseudo-mask stage, segmentation stage (depends on the blocks, never the reverse).

Importing this package is cheap; the stages import torchvision/timm/PyYAML lazily when they run.
"""

from .cam_stage import train_cam
from .methods import CAMMethod, available_methods, get_method, register_method
from .pseudo_stage import eval_cams, make_pseudo_masks
from .reproduce import reproduce
from .schema import RunConfig, load_run_config
from .seg_stage import eval_seg, train_seg

__all__ = [
           "CAMMethod",
           "RunConfig",
           "available_methods",
           "eval_cams",
           "eval_seg",
           "get_method",
           "load_run_config",
           "make_pseudo_masks",
           "register_method",
           "reproduce",
           "train_cam",
           "train_seg",
]

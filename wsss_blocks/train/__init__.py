"""Reference trainer: CAM stage, pseudo-mask stage, segmentation stage (depends on the blocks, never the reverse).

Importing this package is cheap; the stages import torchvision/timm/PyYAML lazily when they run.
"""

from .cam_stage import train_cam
from .methods import CAMMethod, available_methods, get_method, register_method
from .pseudo_stage import eval_cams, make_pseudo_masks
from .reproduce import reproduce
from .schema import RunConfig, load_run_config
from .seg_stage import eval_seg, train_seg

__all__ = ["train_cam", "eval_cams", "make_pseudo_masks", "train_seg", "eval_seg", "reproduce", "RunConfig",
           "load_run_config", "CAMMethod", "get_method", "register_method", "available_methods"]

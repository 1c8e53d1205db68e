"""wsss-blocks: building blocks for weakly supervised semantic segmentation."""

__version__ = "0.1.0.dev0"

"""Reference trainer: CAM stage, pseudo-mask stage, segmentation stage (depends on the blocks, never the reverse)."""

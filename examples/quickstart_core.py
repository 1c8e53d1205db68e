"""Core-only quick start: CAMs from features, normalisation, seed masks and mIoU (needs only torch).

Run: ``python examples/quickstart_core.py``. CI runs it against the installed wheel.
"""

import torch

from wsss_blocks.cam import cam_from_features, cams_to_mask, multiscale_cams, normalize_cams
from wsss_blocks.metrics import SegmentationMetric, sweep_bg_score

torch.manual_seed(0)
backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU())
classifier = torch.nn.Conv2d(16, 20, 1, bias=False)


def cam_fn(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(cam_from_features(backbone(x), classifier.weight))


images = torch.rand(2, 3, 32, 32)
labels = torch.zeros(2, 20)
labels[0, 0] = labels[1, 14] = 1
target = torch.zeros(2, 32, 32, dtype=torch.long)
target[0, 8:24, 8:24] = 1
target[1, :16] = 15

cams = normalize_cams(multiscale_cams(cam_fn, images, scales=(1.0, 0.5)))
masks = cams_to_mask(cams, labels, bg_score=0.15)
metric = SegmentationMetric(num_classes=21)
metric.update(masks, target)
print(f"seed mIoU at bg 0.15: {100 * float(metric.compute()['miou']):.2f}")
print(sweep_bg_score((cams, labels, target), num_classes=21).table())

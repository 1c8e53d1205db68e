"""L2G in your own training loop: where the patch sampler and the transfer loss go (runs on CPU in seconds).

Two independent stride-8 networks with K = C + 1 output maps (background last, as in L2G): the local one
learns from crops with a classification loss, the global one only imitates the local maps (transfer loss).
The sizes are tiny stand-ins for the released 448² view, 6 patches of 320², ResNet-38 and 20 VOC classes.
"""

import torch
import torch.nn.functional as F
from torch import nn

from wsss_blocks.local_global import LocalPatchSampler, LocalToGlobalTransfer

C = 5  # foreground classes


def tiny_net() -> nn.Module:  # any backbone + 1×1 CAM head with output stride 8 works here
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, C + 1, 1, bias=False))


def main(steps: int = 5) -> list[dict]:
    torch.manual_seed(0)
    global_net, local_net = tiny_net(), tiny_net()  # two separate networks, no weight sharing
    sampler = LocalPatchSampler(num_patches=6, patch_size=64, generator=torch.Generator().manual_seed(0))
    l2g = LocalToGlobalTransfer(num_classes=C)  # released VOC defaults: λ=10, τ=0.001, keep-max, ...
    opt = torch.optim.SGD([*global_net.parameters(), *local_net.parameters()], lr=1e-2, momentum=0.9)
    images, saliency = torch.randn(3, 3, 96, 96), torch.rand(3, 1, 96, 96)  # a batch from your loader
    labels = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1]])
    history = []
    for _ in range(steps):
        views = sampler(images, labels, saliency)  # 4 corners + 2 random crops per image
        local_maps = local_net(views["patches"])  # B·N × K × 8 × 8
        loss_cls = F.multilabel_soft_margin_loss(local_maps[:, :C].mean((2, 3)), views["patch_labels"])
        global_maps = global_net(images)  # B × K × 12 × 12; no classification loss on the global net
        loss_kt = l2g(global_maps, local_maps, views["boxes"], labels, views["patch_saliency"])
        opt.zero_grad()
        loss_kt.backward(retain_graph=True)  # (only to show which network the transfer loss reaches)
        g_kt = sum(float(p.grad.abs().sum()) for p in global_net.parameters() if p.grad is not None)
        l_kt = sum(float(p.grad.abs().sum()) for p in local_net.parameters() if p.grad is not None)
        loss_cls.backward()  # in a real loop: (loss_cls + loss_kt).backward()
        opt.step()
        history.append({"loss_cls": loss_cls.item(), "loss_kt": loss_kt.item(),
                        "global_grad_from_kt": g_kt, "local_grad_from_kt": l_kt})
        print(f"loss_cls {loss_cls.item():.4f}  loss_kt {loss_kt.item():.4f}")
    return history  # after training, CAMs come from the global network only


if __name__ == "__main__":
    main()

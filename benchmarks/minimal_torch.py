"""The shortest honest PyTorch training loop for the spec's WRN: the harness's yardstick.

The same network (the torch backend's module) and the same optimizer, with
none of the harness around it: a normalised float batch already on the
device, zero_grad, forward, loss, backward, step. The harness's step is
compared with this one side by side (``benchmarks/targets.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backends.torch_backend import WideResNet
from harness.spec import WRNSpec


def build(depth: int, width: int, batch: int, device: str = "cpu"):
    """A step function on one fixed batch, and the matching synchronisation."""
    torch.manual_seed(0)
    model = WideResNet(WRNSpec(depth, width)).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step, sync

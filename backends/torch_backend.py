"""PyTorch backend: the spec's WRN as an ``nn.Module``, on CPU or CUDA.

Module names mirror the spec's canonical names (``group2.block1.conv1``), so
weights map one to one: canonical ``scale``/``bias``/``mean``/``var``/``kernel``
are torch's ``weight``/``bias``/``running_mean``/``running_var``/``weight``,
with convolution kernels stored OIHW here and HWIO in the canonical format.

Speed options, each recorded in the row: ``channels_last`` (NHWC memory
format), ``precision='bf16'`` (autocast on CUDA; weights, optimizer and loss
stay fp32) and ``compile`` (``torch.compile`` of the model; its first step,
which compiles, is reported as compile time).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import numpy as np
import torch

# torch imports Triton lazily, on the first optimizer step. If TensorFlow (which
# the tfds data source imports) came first, that import crashes the process
# (TensorFlow 2.21 with Triton 3.8), so Triton comes now, before any data source.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401
import torch.nn.functional as F
from torch import nn

from harness import config as cfg
from harness.backend import DeviceUnavailable, Trainer
from harness.config import RunConfig
from harness.data import CIFAR10_MEAN, CIFAR10_STD
from harness.spec import BN_EPSILON, BN_MOMENTUM, POOL_SIZE, STEM_CHANNELS, Block, WRNSpec
from harness.timing import best_time

_TORCH_SUFFIX = {
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
    "kernel": "weight",
}


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel * kernel * cin)))
    return conv


def _bn(channels: int) -> nn.BatchNorm2d:
    # torch's momentum is the weight of the batch statistic, as in the spec.
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3, plus the spec's shortcut."""

    def __init__(self, block: Block, dropout: float):
        super().__init__()
        self.bn1 = _bn(block.in_channels)
        self.conv1 = _conv(block.in_channels, block.out_channels, 3, block.stride)
        self.bn2 = _bn(block.out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv(block.out_channels, block.out_channels, 3)
        self.shortcut = (
            _conv(block.in_channels, block.out_channels, 1, block.stride)
            if block.projection
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        # A projection shortcut sees the BN-ReLU'd input; the identity sees x itself.
        skip = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    def __init__(self, spec: WRNSpec):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = _conv(spec.in_channels, STEM_CHANNELS, 3)
        for g in range(1, 4):
            blocks = [
                (b.name.split(".")[1], PreActBlock(b, spec.dropout))
                for b in spec.blocks
                if b.name.startswith(f"group{g}.")
            ]
            self.add_module(f"group{g}", nn.Sequential(OrderedDict(blocks)))
        self.head = nn.Module()
        self.head.bn = _bn(spec.final_channels)
        self.head.dense = nn.Linear(spec.final_channels, spec.num_classes)
        bound = 1.0 / math.sqrt(spec.final_channels)
        nn.init.uniform_(self.head.dense.weight, -bound, bound)
        nn.init.zeros_(self.head.dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem.conv(x)
        x = self.group3(self.group2(self.group1(x)))
        x = F.relu(self.head.bn(x))
        x = F.avg_pool2d(x, POOL_SIZE).flatten(1)
        return self.head.dense(x)


def count_params(spec: WRNSpec, model: str = "spec") -> int:
    with torch.device("meta"):
        net = WideResNet(spec)
    return sum(p.numel() for p in net.parameters())


def versions() -> dict[str, str]:
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda or "",
    }


def create_trainer(config: RunConfig) -> TorchTrainer:
    return TorchTrainer(config)


class TorchTrainer(Trainer):
    def __init__(self, config: RunConfig):
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device {config.device} asked for, but torch sees no CUDA device"
            )
        if config.threads:
            torch.set_num_threads(config.threads)
        if self.device.type == "cuda":
            # fp32 means fp32: no TF32 in convolutions or matrix products.
            torch.backends.cudnn.allow_tf32 = config.precision != "fp32"
            torch.backends.cuda.matmul.allow_tf32 = config.precision != "fp32"
        torch.manual_seed(config.seed)

        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.model = WideResNet(config.spec).to(self.device, memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.optimizer = _optimizer(config, self.model)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(CIFAR10_MEAN, device=self.device).view(shape)
        self.std = torch.tensor(CIFAR10_STD, device=self.device).view(shape)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._upload_images(images)
        # NHWC uint8 -> NCHW float; the permuted view already has channels-last strides.
        x = x.permute(0, 3, 1, 2).float()
        if self.config.normalize:
            x = (x - self.mean) / self.std
        x = x.contiguous(memory_format=self.memory_format)
        y = labels if isinstance(labels, torch.Tensor) else self._upload_labels(labels)
        return x, y

    def _upload_images(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images
        return torch.from_numpy(images).to(self.device, non_blocking=True)

    def _upload_labels(self, labels) -> torch.Tensor:
        return torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(
            self.device, non_blocking=True
        )

    def device_batch(self, images, labels):
        return self._upload_images(images), self._upload_labels(labels)

    def infer_step(self, images):
        x, _ = self._inputs(images, torch.zeros(0, dtype=torch.int64))
        self.model.eval()
        try:
            with torch.inference_mode(), self._autocast():
                return self.forward(x)
        finally:
            self.model.train()

    def matmul_flops(self) -> float:
        size = 8192 if self.device.type == "cuda" else 2048
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float32
        a = torch.randn(size, size, device=self.device, dtype=dtype)
        b = torch.randn(size, size, device=self.device, dtype=dtype)
        return 2 * size**3 / best_time(lambda: a @ b, self.sync)

    def param_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_step(self, images, labels, lr):
        x, y = self._inputs(images, labels)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._autocast():
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def eval_step(self, images, labels, bn="running"):
        x, y = self._inputs(images, labels)
        self.model.eval()
        try:
            with (
                torch.no_grad(),
                self._autocast(),
                _batch_statistics(self.model, bn == "batch"),
            ):
                logits = self.forward(x).float()
        finally:
            self.model.train()
        loss = F.cross_entropy(logits, y, reduction="sum")
        correct = (logits.argmax(dim=1) == y).sum()
        return float(loss), int(correct)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"

    def peak_device_memory_bytes(self):
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return None

    def is_out_of_memory(self, error):
        return isinstance(error, (torch.OutOfMemoryError, MemoryError))

    def export_weights(self):
        state = self.model.state_dict()
        out = {}
        for param in self.config.spec.params:
            tensor = state[_torch_name(param.name)].detach().cpu().numpy()
            out[param.name] = _to_canonical(tensor)
        return out

    def import_weights(self, weights):
        state = {}
        for param in self.config.spec.params:
            value = np.asarray(weights[param.name], dtype=np.float32)
            if value.shape != param.shape:
                raise ValueError(f"{param.name}: shape {value.shape}, the spec has {param.shape}")
            state[_torch_name(param.name)] = torch.from_numpy(_from_canonical(value))
        missing = set(self.model.state_dict()) - set(state)
        # num_batches_tracked only matters for momentum=None, which the spec never uses.
        for name in missing:
            state[name] = self.model.state_dict()[name]
        self.model.load_state_dict(state)

    def close(self):
        del self.model, self.forward, self.optimizer
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _torch_name(canonical: str) -> str:
    prefix, _, suffix = canonical.rpartition(".")
    return f"{prefix}.{_TORCH_SUFFIX[suffix]}"


def _to_canonical(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # dense (out, in) -> (in, out)
        return value.T
    return value


def _from_canonical(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


@contextlib.contextmanager
def _batch_statistics(model: nn.Module, active: bool):
    """Let batch norm normalise by each batch's own statistics (``eval_bn='batch'``).

    Dropout stays off, and the running averages are restored afterwards, so
    that evaluating never changes the model.
    """
    if not active:
        yield
        return
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in norms
    ]
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m, (mean, var, tracked) in zip(norms, saved, strict=True):
            m.eval()
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)


def _optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.base_lr,
            momentum=cfg.SGD_MOMENTUM,
            nesterov=True,
            weight_decay=cfg.SGD_WEIGHT_DECAY,
        )
    # Trax's decay multiplies weights by (1 - rate) per step; AdamW multiplies by
    # (1 - lr * wd), so wd = rate / lr reproduces it at the (constant) Adam lr.
    return torch.optim.AdamW(
        model.parameters(),
        lr=config.base_lr,
        betas=(cfg.ADAM_B1, cfg.ADAM_B2),
        eps=cfg.ADAM_EPS,
        weight_decay=cfg.ADAM_WEIGHT_DECAY_RATE / config.base_lr,
    )

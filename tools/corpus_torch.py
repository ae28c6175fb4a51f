"""The corpus architectures written in torch code (seeded weights, non-trivial BatchNorm statistics), exported by
torch's dynamo exporter as a user would: a ResNet-style CNN, a MobileNet-style CNN (depthwise, squeeze-excite,
hard-swish, residual, concat), a UNet-style model (ConvTranspose, bilinear Resize, skip concats) and a GRU+LSTM
sequence classifier. Imported lazily by `quantir.tools.corpus` (torch is needed only to build them)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["export_module"]


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class ResNetTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), _bn(16), nn.ReLU())

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _bn(cout))  # fmt: skip

        self.b1, self.b2 = block(16, 16, 1), block(16, 32, 2)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), _bn(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.b1(x) + x)
        x = torch.relu(self.b2(x) + self.down(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))  # type: ignore[no-any-return]


class MobileNetTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), _bn(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), _bn(16), nn.ReLU6())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1),
                                nn.Hardsigmoid())  # fmt: skip
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), _bn(16))
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), _bn(48), nn.Hardswish(),
                                    nn.Conv2d(48, 48, 3, 2, 1, groups=48, bias=False), _bn(48), nn.Hardswish(),
                                    nn.Conv2d(48, 24, 1, bias=False), _bn(24))  # fmt: skip
        self.head = nn.Sequential(nn.Conv2d(40, 64, 1), nn.Hardswish())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x)
        x = self.pw(y * self.se(y)) + x
        c = torch.cat([self.expand(x), nn.functional.max_pool2d(x, 2)], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(c), 1), 1))  # type: ignore[no-any-return]


class UNetTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.e2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, 2)
        self.d1 = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU())
        self.d2 = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(a)
        u = self.d1(torch.cat([self.up(self.e3(b)), b], 1))
        u = nn.functional.interpolate(u, scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(self.d2(torch.cat([u, a], 1))))


class RecurrentTiny(nn.Module):
    """Digit images read row by row: GRU then LSTM, a classifier on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 32, batch_first=True)
        self.lstm = nn.LSTM(32, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x)
        h, _ = self.lstm(h)
        return self.fc(h[:, -1])  # type: ignore[no-any-return]


_MODULES: dict[str, type[nn.Module]] = {
    "resnet": ResNetTiny, "mobilenet": MobileNetTiny, "unet": UNetTiny, "recurrent": RecurrentTiny,
}  # fmt: skip


def export_module(kind: str, example: dict[str, np.ndarray], path: Path) -> None:
    """Build the `kind` module with seeded weights and BatchNorm statistics and export it to `path` (dynamic
    batch), with `example`'s single input name."""
    torch.manual_seed(0)
    model = _MODULES[kind]().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    ((name, value),) = example.items()
    args: Any = (torch.from_numpy(value),)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, optimize=False, input_names=[name], output_names=["y"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)  # fmt: skip
    assert program is not None
    program.save(str(path))

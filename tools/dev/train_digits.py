"""Train the bundled digits CNN reproducibly (fixed seeds, a few seconds on CPU) and export it to ONNX
with the torch dynamo exporter (optimize=False, so module names survive as provenance).

Run: python -m quantir.tools.dev.train_digits [-o tools/data/digits_cnn.onnx]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from quantir.tools.digits import load_digits_split

__all__ = ["DigitsCNN", "load_bundled_module", "train"]


def _model():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(32)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(32 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.pool(torch.relu(self.bn2(self.conv2(x))))
            x = torch.flatten(x, 1)
            return self.fc2(torch.relu(self.fc1(x)))

    return DigitsCNN()


DigitsCNN = _model


def load_bundled_module():  # type: ignore[no-untyped-def]
    """The digits CNN as an nn.Module (eval mode) with the bundled weights: the ONNX initializer names are its
    state_dict keys, so no training is needed."""
    import onnx
    import torch
    from onnx import numpy_helper

    from quantir.tools.digits import bundled_model_path

    model = _model()
    weights = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
        for i in onnx.load(str(bundled_model_path())).graph.initializer
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or not all(k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(f"bundled weights do not fit DigitsCNN: missing {missing}, unexpected {unexpected}")
    return model.eval()


def train(epochs: int = 30, seed: int = 0):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(seed)
    split = load_digits_split(seed)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(split.train_x)
    y = torch.from_numpy(split.train_y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(split.test_x)).argmax(1).numpy()
    acc = float(np.mean(pred == split.test_y))
    return model, acc


def export(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    example = (torch.zeros(1, 1, 8, 8),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    prog = torch.onnx.export(model, example, dynamo=True, optimize=False, input_names=["x"], output_names=["logits"],
                             dynamic_shapes=({0: batch},))  # fmt: skip
    if prog is None:
        raise RuntimeError("torch.onnx.export returned no program")
    prog.save(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", default=str(Path(__file__).parent / "data" / "digits_cnn.onnx"))
    args = parser.parse_args()
    model, acc = train()
    export(model, Path(args.output))
    print(f"held-out top-1 {acc:.4f}; wrote {args.output}")


if __name__ == "__main__":
    main()

"""Per-feature affine transform y = x * scale + shift with learned parameters."""
import torch
import torch.nn as nn

batch_size = 8192
features = 2048
cpu_sizes = {"batch_size": 128, "features": 256}


class Model(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(features) + 0.5)
        self.shift = nn.Parameter(torch.randn(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def get_inputs():
    return [torch.randn(batch_size, features)]


def get_init_inputs():
    return [features]

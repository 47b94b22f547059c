"""Sum of two vectors of the same length."""
import torch
import torch.nn as nn

n = 1 << 24
cpu_sizes = {"n": 1 << 16}


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def get_inputs():
    return [torch.randn(n), torch.randn(n)]


def get_init_inputs():
    return []

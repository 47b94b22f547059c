"""Sum over the last dimension (a row reduction)."""
import torch
import torch.nn as nn

rows = 8192
cols = 2048
cpu_sizes = {"rows": 256, "cols": 512}


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-1)


def get_inputs():
    return [torch.randn(rows, cols)]


def get_init_inputs():
    return []

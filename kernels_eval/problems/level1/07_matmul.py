"""Dense matrix product A (M x K) @ B (K x N)."""
import torch
import torch.nn as nn

M = 2048
K = 2048
N = 2048
cpu_sizes = {"M": 128, "K": 128, "N": 128}


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


def get_inputs():
    return [torch.randn(M, K), torch.randn(K, N)]


def get_init_inputs():
    return []

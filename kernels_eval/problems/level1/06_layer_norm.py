"""Layer normalisation over the last dimension, with a learned scale and shift."""
import torch
import torch.nn as nn

batch_size = 4096
hidden = 2048
cpu_sizes = {"batch_size": 64, "hidden": 256}


class Model(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        with torch.no_grad():  # not the identity, so copying weights matters
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def get_inputs():
    return [torch.randn(batch_size, hidden)]


def get_init_inputs():
    return [hidden]

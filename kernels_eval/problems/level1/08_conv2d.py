"""A 3x3 convolution with padding 1 over a batch of feature maps."""
import torch
import torch.nn as nn

batch_size = 16
in_channels = 32
out_channels = 64
size = 128
cpu_sizes = {"batch_size": 2, "in_channels": 4, "out_channels": 8, "size": 16}


class Model(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def get_inputs():
    return [torch.randn(batch_size, in_channels, size, size)]


def get_init_inputs():
    return [in_channels, out_channels]

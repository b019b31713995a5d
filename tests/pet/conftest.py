
import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """Two hidden linear layers of different shapes and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 12)
        self.inp = nn.Linear(12, 32)
        self.hidden = nn.Linear(32, 48)
        self.head = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.head(torch.relu(self.hidden(h)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(6, 3, 12)

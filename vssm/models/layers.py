"""Building blocks shared by the families. Feature maps inside blocks are channels-last, (batch, H, W, C)."""
import torch
import torch.nn as nn


class Permute(nn.Module):
    """x.permute(*dims) as a module (keeps the authors' Sequential indices, e.g. NCHW <-> NHWC)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.dims))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 over the last dimension."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(batch, H, W, C) -> (batch, C, H, W) view (channels-last memory)."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(batch, C, H, W) -> (batch, H, W, C) view."""
    return x.permute(0, 2, 3, 1)


def checkpoint_seq(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` under activation checkpointing (recomputed in the backward)."""
    return torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False)


TORCHSCRIPT_UNSUPPORTED = (
    "TorchScript cannot compile vssm's token mixers (and is deprecated since PyTorch 2.5): they compute their "
    "scan orders in Python for each input size and run the selective scan through a Python autograd.Function "
    "over interchangeable backends. Use torch.fx (timm's feature extraction traces them as leaf modules) or "
    "torch.compile instead")


def refuse_torchscript(module: nn.Module):
    """``__prepare_scriptable__`` of the token mixers: ``torch.jit.script`` of any model holding one stops here
    with the reason, instead of deep inside TorchScript's compiler."""
    raise RuntimeError(f"{type(module).__name__}: {TORCHSCRIPT_UNSUPPORTED}")

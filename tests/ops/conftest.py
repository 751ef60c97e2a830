import pytest
import torch


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Every uninitialised float tensor starts as NaN, so an element a backend forgets to write fails the test:
    Python's allocations here, the compiled cpu backend's C++ allocations through its VSSM_CPU_POISON switch
    (the CUDA emulator poisons its own)."""
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty
    # torch.device(...) contexts look factories up in a set cached on first use: fill it with the real ones now,
    # or a context first entered under this fixture keeps the patched torch.empty, and every later model built
    # on the meta device in this process gets CPU parameters (seen: a meta build failing in tests/deploy)
    torch.utils._device._device_constructors()

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: poison(new_empty(self, *a, **k)))
    monkeypatch.setenv("VSSM_CPU_POISON", "1")

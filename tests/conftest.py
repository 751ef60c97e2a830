import os

import pytest
import torch

# Without a GPU, the Triton kernels run in Triton's CPU interpreter. The switch is read when the kernels
# are defined, so it must be set before vssm's Triton module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE_GPU = "cuda" if torch.cuda.is_available() else None


@pytest.fixture(autouse=True)
def restore_intra_op_threads():
    """Entry points called in-process set the thread count; another test must not inherit it (two workers
    with two threads each on two cores make every small op wait for a descheduled thread)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)

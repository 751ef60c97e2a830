import os

import torch

# Without a GPU, the Triton kernels run in Triton's CPU interpreter. The switch is read when the kernels
# are defined, so it must be set before vssm's Triton module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE_GPU = "cuda" if torch.cuda.is_available() else None

"""Small change-detection folders for the tests."""
import os

import numpy as np
from PIL import Image

from vssm.data.change_pairs import generate_pair

LEVIR = ("A", "B", "label")
CHANGEMAMBA = ("T1", "T2", "GT")


def make_pairs(root, counts=(("train", 12), ("test", 4)), size=48, layout=LEVIR, seed=0):
    """Generated pairs (vssm.data.change_pairs) written in ``layout`` under root/<split>/."""
    rng = np.random.default_rng(seed)
    for split, count in counts:
        folders = [os.path.join(root, split, part) for part in layout]
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
        for i in range(count):
            for folder, array in zip(folders, generate_pair(rng, size=size)):
                Image.fromarray(array).save(os.path.join(folder, f"{split}_{i}.png"))
    return str(root)

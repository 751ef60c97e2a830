"""Train and evaluate vssm classifiers (Swin-style trainer): ``vssm.classification.main``.

    python classification/main.py --cfg configs/classification/vmamba/vmamba_nano.yaml   # embedded digits, CPU
    torchrun --nproc_per_node=N classification/main.py --cfg CONFIG --batch-size 128 --data-path DATA --output OUT
"""
import sys

from vssm.classification.main import cli

if __name__ == "__main__":
    sys.exit(cli())

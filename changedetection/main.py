"""Train and evaluate change detectors on any vssm backbone: ``vssm.changedetection.main``.

    python changedetection/main.py --cfg configs/changedetection/vmamba/vmamba_nano.yaml   # embedded pairs, CPU
    torchrun --nproc_per_node=4 changedetection/main.py --cfg CONFIG --data-path /data/LEVIR-CD+ --batch-size 4
"""
import sys

from vssm.changedetection.main import cli

if __name__ == "__main__":
    sys.exit(cli())

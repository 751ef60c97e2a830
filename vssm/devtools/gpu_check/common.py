"""What the gpu_check steps share: arguments, the deadline, JSON output."""
import argparse
import json
import os
import time


def step_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda", help="cuda, or cpu with --dry")
    p.add_argument("--dry", action="store_true", help="tiny shapes on the CPU: exercise the code, measure nothing")
    p.add_argument("--seconds", type=float, default=600.0, help="time budget; the rest is skipped with a reason")
    p.add_argument("--json", required=True, help="where to write the results")
    return p


class Deadline:
    """Seconds left of a step's budget."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()

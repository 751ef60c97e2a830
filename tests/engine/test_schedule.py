"""The per-update learning-rate schedule with gradient accumulation."""
import pytest
import torch

from vssm.classification.config import get_config
from vssm.engine.optim import build_scheduler, group_size, update_index, updates_per_epoch


@pytest.mark.parametrize("steps,accum", [(9, 4), (8, 4), (7, 1), (3, 5)])
def test_the_schedule_spans_every_update_of_the_run(steps, accum):
    """Before: with 9 batches per epoch and 4 per update the schedule counted 2 updates per epoch while the loop
    made 3 (the last group is shorter), so a 6-epoch cosine reached its minimum after about 5 epochs; and the short
    group's loss was divided by 4, not by its 2 batches."""
    epochs = 6
    config = get_config(None, ["TRAIN.EPOCHS", str(epochs), "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.MIN_LR", "0.0",
                               "TRAIN.ACCUMULATION_STEPS", str(accum)])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_scheduler(config, optimizer, steps, 1.0)
    rates, indices = [], []
    for epoch in range(epochs):
        for idx in range(steps):
            if (idx + 1) % accum == 0 or idx + 1 == steps:  # the training loop's updates
                indices.append(update_index(epoch, idx, steps, accum))
                scheduler.step_update(indices[-1])
                rates.append(optimizer.param_groups[0]["lr"])
    assert indices == list(range(1, len(indices) + 1)) and len(indices) == epochs * updates_per_epoch(steps, accum)
    assert rates == sorted(rates, reverse=True) and rates[-1] < 1e-3 * rates[0]
    assert rates[-2] > 1e-3 * rates[0], "the minimum is reached only at the run's last update"
    groups = [group_size(idx, steps, accum) for idx in range(steps)]
    assert sum(1 / g for g in groups) == pytest.approx(updates_per_epoch(steps, accum))  # each update a mean

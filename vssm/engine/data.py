"""Data loading every task shares: loaders whose order and augmentations depend only on (seed, epoch), and
evaluation split across processes with every sample seen exactly once."""
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..cli import UsageError


class DataError(UsageError):
    """A dataset that cannot be used (missing folders, no samples, mismatched classes, unreadable files)."""


class ShardSampler(torch.utils.data.Sampler):
    """Every world-th index from rank: each sample is evaluated exactly once across processes (no padding)."""

    def __init__(self, size: int, world: int, rank: int):
        self.indices = list(range(rank, size, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def seeded_loaders(config, train_set, eval_set, seed: int, collate_fn, eval_batch_size: int, unit: str):
    """(training loader or None, evaluation loader, set_epoch): call ``set_epoch(epoch)`` before each epoch, so
    that the shuffle and the workers' random augmentations are those of (seed, epoch) on every run and resume."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    common = dict(num_workers=config.DATA.NUM_WORKERS, collate_fn=collate_fn, persistent_workers=False,
                  pin_memory=config.DATA.PIN_MEMORY and torch.cuda.is_available())
    eval_loader = DataLoader(eval_set, batch_size=eval_batch_size, sampler=ShardSampler(len(eval_set), world, rank),
                             **common)
    if train_set is None:
        return None, eval_loader, lambda epoch: None
    if len(train_set) < config.DATA.BATCH_SIZE * world:
        raise DataError(f"{len(train_set)} training {unit} cannot fill one batch of {config.DATA.BATCH_SIZE} x "
                        f"{world} processes; lower --batch-size")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    generator = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=config.DATA.BATCH_SIZE, sampler=sampler, drop_last=True,
                              generator=generator, **common)

    def set_epoch(epoch: int):
        sampler.set_epoch(epoch)
        generator.manual_seed(seed * 100003 + epoch * 1009 + rank)  # worker seeds of this epoch

    return train_loader, eval_loader, set_epoch

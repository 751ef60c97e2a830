"""The two errors of checkpoint handling."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (missing, truncated, corrupt, unsafe, or holding values that make no sense)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the model."""

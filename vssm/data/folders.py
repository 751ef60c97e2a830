"""Generated data sets written once, into a scratch folder beside their place, and published atomically.

A finished set holds ``.complete``: empty, or the JSON recipe it was made from (generator version, counts,
size, seed). A set made from another recipe is replaced when a new one is published; a folder without the
marker is never touched (it is not a set this code finished: an interrupted older writer, or the user's own).
"""
import json
import os
import shutil

MARKER = ".complete"


def is_complete(root: str, recipe: dict = None) -> bool:
    """Whether ``root`` holds a finished set (made from ``recipe``, when one is given)."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            text = f.read()
    except OSError:
        return False
    if recipe is None:
        return True
    try:
        return json.loads(text) == recipe
    except ValueError:
        return False


def scratch(root: str) -> str:
    """An empty scratch folder beside ``root`` (same file system: the rename that publishes it is atomic)."""
    tmp = f"{root}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def publish(tmp: str, root: str, recipe: dict = None) -> str:
    """Mark the finished set in ``tmp`` complete and rename it to ``root``; returns root.

    An older finished set at ``root`` (another recipe) is replaced; a concurrent writer of the same recipe that
    finished first wins and this copy is removed; a folder at ``root`` that is not a finished set is an error.
    """
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write("" if recipe is None else json.dumps(recipe))
    if recipe is not None and is_complete(root) and not is_complete(root, recipe):
        stale = f"{root}.stale{os.getpid()}"
        os.rename(root, stale)  # out of the way first: readers see the old set or the new one, never a mixture
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(root, recipe):
            raise FileExistsError(f"{root} exists and is not a finished generated set (no {MARKER} marker): "
                                  f"remove it or choose another folder") from None
    return root

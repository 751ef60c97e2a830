"""Scan orders of an H x W grid: which spatial position (h * W + w) is the t-th token of a sequence.

An order set is a LongTensor (K, L): ``orders[k, t]`` is the row-major position read at step t of
direction k. Every row is a permutation of range(L).
"""
import functools

import torch

_ORDER_CACHES = []  # every order_cache's lru_cache (clear_order_caches)


def order_cache(fn):
    """lru_cache for order and index tables, bypassed while tracing (FLOP counting): a tensor made inside
    a trace cannot be reused later in it, so traced runs rebuild their tables. Tables are built outside
    inference mode, so a table first made under ``torch.inference_mode()`` still serves training later, and on
    the CPU whatever the default device: a table first made under ``torch.device("meta")`` (the command-line
    tools' memory estimate runs a meta model's forward so) was a meta tensor that every later forward read."""
    def build(*args):
        with torch.inference_mode(False), torch.device("cpu"):
            return fn(*args)
    cached = functools.lru_cache(maxsize=256)(build)
    _ORDER_CACHES.append(cached)

    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args) if torch.jit.is_tracing() else cached(*args)
    return wrapper


def clear_order_caches():
    """Forget every table :func:`order_cache` keeps (they are rebuilt on demand)."""
    for cached in _ORDER_CACHES:
        cached.cache_clear()


_TABLES = {}  # kind -> (rows(option), build(H, W, option) -> (rows, H*W) CPU LongTensor, check(H, W, option))
MAX_POSITIONS = 2 ** 22  # a 2048 x 2048 token grid (an 8192-pixel image at patch 4): 32 MB per order row


def register_order_table(kind: str, rows, build, check=None):
    """Make a family of order tables reachable from compiled graphs (:func:`graph_order_table`); ``check(H, W,
    option)`` raises ValueError for sizes or an option the family cannot build (H and W may be symbolic: use
    ``torch._check_value``)."""
    _TABLES[kind] = (rows, build, check)


def _check_request(kind, H, W, option):
    """The arguments of ``vssm::scan_orders``: a registered kind, a non-empty grid of at most MAX_POSITIONS, an
    option the kind knows (checked by the fake kernel too, so a compiled graph refuses them when traced)."""
    if kind not in _TABLES:
        raise ValueError(f"scan_orders: unknown kind {kind!r}; registered: {', '.join(sorted(_TABLES))}")
    torch._check_value(H >= 1, lambda: f"scan_orders: H must be >= 1, got {H}")
    torch._check_value(W >= 1, lambda: f"scan_orders: W must be >= 1, got {W}")
    torch._check_value(H * W <= MAX_POSITIONS, lambda: f"scan_orders: a {H} x {W} grid has more than "
                                                       f"{MAX_POSITIONS} positions")
    check = _TABLES[kind][2]
    if check is not None:
        check(H, W, option)


@torch.library.custom_op("vssm::scan_orders", mutates_args=())
def _scan_orders(kind: str, H: int, W: int, option: str, device: torch.device) -> torch.Tensor:
    _check_request(kind, H, W, option)
    return _TABLES[kind][1](H, W, option).to(device, copy=True)


@_scan_orders.register_fake
def _(kind, H, W, option, device):
    _check_request(kind, H, W, option)
    return torch.empty((_TABLES[kind][0](option), H * W), dtype=torch.long, device=device)


def graph_order_table(kind: str, H: int, W: int, option: str, device) -> torch.Tensor:
    """An order table (rows, H*W) as the operator ``vssm::scan_orders``, which builds it when the graph runs:
    what the order functions return under torch.compile and torch.export, where their caches cannot go."""
    return torch.ops.vssm.scan_orders(kind, H, W, option, torch.device(device if device is not None else "cpu"))


@order_cache
def _cross_orders_cpu(H: int, W: int) -> torch.Tensor:
    rows = torch.arange(H * W)
    cols = rows.view(H, W).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


def cross_orders(H: int, W: int, device=None) -> torch.Tensor:
    """VMamba's 4 directions: row-major, column-major, and the reverse of each. (4, H*W)."""
    if torch.compiler.is_compiling():  # H and W stay symbolic: dynamic sizes (the ONNX export computes the table)
        return graph_order_table("cross", H, W, "", device)
    H, W = int(H), int(W)  # shapes are tensors while tracing
    return on_device(_cross_orders_cpu(H, W), device)


def _no_option(kind):
    def check(H, W, option):
        if option:
            raise ValueError(f"scan_orders: the {kind} orders take no option, got {option!r}")
    return check


register_order_table("cross", lambda option: 4, lambda H, W, option: _cross_orders_cpu(H, W), _no_option("cross"))


@order_cache
def _cached_on_device(orders: torch.Tensor, device: str) -> torch.Tensor:
    return orders.to(device)


def on_device(orders: torch.Tensor, device) -> torch.Tensor:
    """A cached CPU table on ``device``, copied there once per table and device."""
    if device is None or torch.device(device).type == "cpu":
        return orders
    return _cached_on_device(orders, str(torch.device(device)))


def inverse_orders(orders: torch.Tensor) -> torch.Tensor:
    """(K, L) -> (K, L): ``inverse[k, p]`` is the step at which direction k reads position p."""
    inverse = torch.empty_like(orders)
    inverse.scatter_(1, orders, torch.arange(orders.shape[1], device=orders.device).expand_as(orders))
    return inverse


@order_cache
def sequence_index(orders: torch.Tensor, per_direction: bool) -> torch.Tensor:
    """Index into (batch, L[*K], C) rows giving (batch, L*K, C) in sequence order (``per_direction``: the
    source holds one row per direction, (batch, L*K, C))."""
    K, L = orders.shape
    t_major = orders.t()  # (L, K): position read at step t by direction k
    if per_direction:
        t_major = t_major * K + torch.arange(K, device=orders.device)
    return t_major.reshape(-1).contiguous()


@order_cache
def merge_index(orders: torch.Tensor) -> torch.Tensor:
    """Index into (batch, L*K, C) sequence rows giving, for each position, its K tokens: (L*K,)."""
    K, L = orders.shape
    steps = inverse_orders(orders).t()  # (L, K): step of position p in direction k
    return (steps * K + torch.arange(K, device=orders.device)).reshape(-1).contiguous()


def locality(orders: torch.Tensor, H: int, W: int, near: int = 4) -> dict:
    """How far apart 2-D neighbours land in the sequences of ``orders`` (K, H*W).

    For every pair of 4-neighbours (p, q) and direction k, the sequence distance |step_k(p) - step_k(q)|.
    Per direction: the mean, 90th percentile and worst distance and the share of pairs within ``near``
    steps, over all pairs and directions. Best direction: the same for each pair's smallest distance over
    the K directions (a token can reach its neighbour through whichever direction keeps them closest).
    """
    inverse = inverse_orders(orders).view(-1, H, W).float()
    gaps = []
    if W > 1:
        gaps.append((inverse[:, :, 1:] - inverse[:, :, :-1]).abs().flatten(1))
    if H > 1:
        gaps.append((inverse[:, 1:, :] - inverse[:, :-1, :]).abs().flatten(1))
    if not gaps:
        raise ValueError(f"a {H}x{W} grid has no neighbouring pairs")
    gaps = torch.cat(gaps, dim=1)  # (K, pairs)

    def summary(g):
        return {"mean": g.mean().item(), "p90": g.quantile(0.9).item(), "worst": g.max().item(),
                "near_share": (g <= near).float().mean().item()}
    return {"per_direction": summary(gaps.flatten()), "best_direction": summary(gaps.min(dim=0).values)}

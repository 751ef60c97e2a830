"""QuadMamba's quadtree scan: one quadrant per image read in fine windows, the other three in coarse ones.

The map (H x W, both multiples of 4) is split into 2 x 2 coarse quadrants; one quadrant per image is
chosen (a one-hot over the 4 quadrants, expanded to a per-pixel mask m) and its tokens are read in
its 2 x 2 fine windows of (H/4, W/4), the other quadrants' tokens as whole (H/2, W/2) windows, raster
inside every window. The sequence is

    seq = fine(x * m) + coarse(x * (1 - m))

with two fixed index tables: ``coarse`` lists each quadrant (raster order) raster inside; ``fine``
depends on ``quad_order``:

- ``"nested"`` (default): each quadrant's 4 fine windows inside that quadrant's own slot of the
  sequence. Both tables put quadrant q's tokens in slot q, so for a one-hot choice the sum is an exact
  permutation of the tokens.
- ``"legacy"``: the authors' layout, fine windows in raster order over the whole 4 x 4 window grid.
  The chosen quadrant's windows then spill into a neighbouring quadrant's slot: L/8 positions hold two
  tokens summed and L/8 hold none. Kept only so the authors' released checkpoints behave as trained.

Both forms are linear in m, so straight-through gradients of a Gumbel-Softmax choice reach the
quadrant predictor. ``merge`` is the transpose: ``y = unfine(y_seq) * m + uncoarse(y_seq) * (1 - m)``.
"""
import torch

from .orders import graph_order_table, on_device, order_cache, register_order_table

QUAD_ORDERS = ("nested", "legacy")


@order_cache
def _orders_cpu(H: int, W: int, quad_order: str):
    grid = torch.arange(H * W).view(H, W)
    h2, w2, h4, w4 = H // 2, W // 2, H // 4, W // 4
    coarse = grid.view(2, h2, 2, w2).permute(0, 2, 1, 3).reshape(-1)  # (q1, q2, h, w)
    windows = grid.view(2, 2, h4, 2, 2, w4)  # (q1, q3, h, q2, q4, w): quadrant row/col q1, q2; fine q3, q4
    if quad_order == "nested":
        fine = windows.permute(0, 3, 1, 4, 2, 5).reshape(-1)  # quadrant, then its fine window, then raster
    else:
        fine = windows.permute(0, 1, 3, 4, 2, 5).reshape(-1)  # fine window raster over the 4 x 4 grid
    return fine, coarse, torch.argsort(fine), torch.argsort(coarse)


def quadtree_orders(H: int, W: int, quad_order: str = "nested", device=None):
    """(fine, coarse, fine_inverse, coarse_inverse) LongTensors of length H*W; H, W multiples of 4."""
    if quad_order not in QUAD_ORDERS:
        raise ValueError(f"quad_order must be one of {', '.join(QUAD_ORDERS)}, got {quad_order!r}")
    if H % 4 or W % 4:
        raise ValueError(f"the quadtree scan needs H and W divisible by 4 (pad first), got {H}x{W}")
    if torch.compiler.is_compiling():  # H and W stay symbolic: dynamic sizes (the ONNX export computes the tables)
        return tuple(graph_order_table("quadtree", H, W, quad_order, device).unbind(0))
    H, W = int(H), int(W)  # shapes are tensors while tracing (FLOP counting)
    return tuple(on_device(t, device) for t in _orders_cpu(H, W, quad_order))


def _check_request(H, W, option):
    if option not in QUAD_ORDERS:
        raise ValueError(f"scan_orders: the quadtree option must be one of {', '.join(QUAD_ORDERS)}, got {option!r}")
    torch._check_value(H % 4 == 0, lambda: f"scan_orders: the quadtree scan needs H divisible by 4, got {H}")
    torch._check_value(W % 4 == 0, lambda: f"scan_orders: the quadtree scan needs W divisible by 4, got {W}")


register_order_table("quadtree", lambda option: 4, lambda H, W, option: torch.stack(_orders_cpu(H, W, option)),
                     _check_request)


def quadrant_mask(choice: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(batch, 4) choice over quadrants (raster order) -> (batch, H, W, 1) per-pixel mask."""
    return choice.view(-1, 2, 1, 2, 1).expand(-1, 2, H // 2, 2, W // 2).reshape(-1, H, W, 1)


def quadtree_gather(x: torch.Tensor, mask: torch.Tensor, quad_order: str = "nested") -> torch.Tensor:
    """(batch, H, W, C) map and (batch, H, W, 1) mask -> (batch, H*W, C) sequence fine(x*m) + coarse(x*(1-m))."""
    batch, H, W, C = x.shape
    fine, coarse, _, _ = quadtree_orders(H, W, quad_order, x.device)
    rows = (x * mask).reshape(batch, H * W, C).index_select(1, fine)
    return rows + (x * (1 - mask)).reshape(batch, H * W, C).index_select(1, coarse)


def quadtree_merge(y: torch.Tensor, mask: torch.Tensor, H: int, W: int, quad_order: str = "nested") -> torch.Tensor:
    """(batch, H*W, C) sequence -> (batch, H, W, C): the transpose of quadtree_gather."""
    batch, L, C = y.shape
    _, _, fine_inv, coarse_inv = quadtree_orders(H, W, quad_order, y.device)
    selected = y.index_select(1, fine_inv).view(batch, H, W, C)
    return selected * mask + y.index_select(1, coarse_inv).view(batch, H, W, C) * (1 - mask)


def quadtree_permutation(choice: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The nested quadtree order of each image as positions: (batch, 4) one-hot choice -> (batch, H*W).

    For a one-hot choice, ``quadtree_gather(x, quadrant_mask(choice, H, W))`` reads position
    ``result[b, t]`` at step t: the fine table in the chosen quadrant's slot, the coarse one elsewhere (both
    tables put quadrant q's tokens in the q-th quarter of the sequence). Gradients do not flow to ``choice``.
    """
    fine, coarse, _, _ = quadtree_orders(H, W, "nested", choice.device)
    L = H * W
    slot = torch.arange(L, device=choice.device) // (L // 4)  # the quadrant each step belongs to
    chosen = choice.argmax(dim=-1)[:, None]  # (batch, 1)
    return torch.where(slot[None] == chosen, fine[None], coarse[None])


def choice_gradient_tables(H: int, W: int, positions: torch.Tensor = None, device=None) -> tuple:
    """What the straight-through gradient of a nested quadtree read as a permutation needs, per map position p:
    (other_if_chosen, other_if_not, quadrant), (H*W,) LongTensors.

    When a quadrant is read as a permutation (:func:`quadtree_permutation`), each token is read at one step
    (its fine step in the chosen quadrant, its coarse step elsewhere); the mask form
    (:func:`quadtree_gather`) also weighs the step the other table gives it, with weight 0. That step reads
    another position of the same quadrant: ``other_if_chosen[p]`` when p's quadrant is the chosen one,
    ``other_if_not[p]`` otherwise. ``quadrant[p]`` is p's quadrant (0-3, raster order). ``positions``: the map
    position at each grid position the quadtree reads (QuadMamba's roll composed into the order), or None.
    """
    fine, coarse, fine_inverse, coarse_inverse = quadtree_orders(H, W, "nested", device)
    rows = torch.arange(H, device=fine.device) // (H // 2)
    cols = torch.arange(W, device=fine.device) // (W // 2)
    quadrant = (rows[:, None] * 2 + cols[None, :]).reshape(-1)
    other_if_chosen, other_if_not = fine[coarse_inverse], coarse[fine_inverse]  # grid positions
    if positions is None:
        return other_if_chosen, other_if_not, quadrant
    grid_of = torch.argsort(positions)  # map position -> grid position
    return positions[other_if_chosen[grid_of]], positions[other_if_not[grid_of]], quadrant[grid_of]


class _ChoiceGradient(torch.autograd.Function):
    """Identity on a (batch, H, W, C) map; its backward also gives the quadrant choice the gradient the mask form
    would (see :func:`with_choice_gradient`)."""

    @staticmethod
    def forward(ctx, t, choice, tables, read):
        ctx.read = read
        ctx.save_for_backward(t, choice, *tables)
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        t, choice, other_if_chosen, other_if_not, quadrant = ctx.saved_tensors
        grad_choice = None
        if ctx.needs_input_grad[1]:
            batch, L = t.shape[0], quadrant.shape[0]
            chosen = quadrant[None] == choice.argmax(dim=-1)[:, None]  # (batch, L)
            other = torch.where(chosen, other_if_chosen, other_if_not)
            other = (other + torch.arange(batch, device=other.device)[:, None] * L).reshape(-1)
            flat_t, flat_grad = t.reshape(batch, L, -1), grad.reshape(batch, L, -1)
            # the scan's input: d/dm = <grad[p] - grad[other p], t[p]>; its output: <grad[p], t[p] - t[other p]>;
            # both as -<gathered - own, multiplier> in the gathered copy (one new tensor)
            own, multiplier = (flat_grad, flat_t) if ctx.read else (flat_t, flat_grad)
            gathered = own.reshape(batch * L, -1).index_select(0, other).view_as(own)
            dm = gathered.sub_(own).mul_(multiplier).sum(-1, dtype=torch.float32)
            dm = torch.where(chosen, -dm, dm)  # the mask is m on the chosen quadrant, 1 - m on the others
            grad_choice = (dm @ torch.nn.functional.one_hot(quadrant, 4).to(dm.dtype)).to(choice.dtype)
        return grad, grad_choice, None, None


def with_choice_gradient(t: torch.Tensor, choice: torch.Tensor, tables: tuple, read: bool) -> torch.Tensor:
    """``t`` unchanged, through which a nested quadtree read as a permutation gives its one-hot ``choice``
    (batch, 4) the straight-through gradient that the mask form gives it (``quadtree_gather`` of the scan's
    input when ``read``, ``quadtree_merge`` of its output otherwise).

    t: (batch, H, W, C) the scan's input (read) or output, in map positions; tables: :func:`choice_gradient_tables`.
    The mask form's forward multiplies and sums by m = the choice's value at a token's quadrant; at a hard (one-hot)
    choice it is the permutation, and its derivative by m at a token p is the difference its other step would
    make: <dL/dy[p], y[p] - y[other p]> at the output, <dL/dx[p] - dL/dx[other p], x[p]> at the input (the
    gradient being the one the permutation's scan gives x), negated outside the chosen quadrant. Summed over
    each quadrant's tokens, that is the choice's gradient: two gathers and a product per map, where the mask form
    makes masked copies, four gathers and four scatters.
    """
    return _ChoiceGradient.apply(t, choice, tables, read)

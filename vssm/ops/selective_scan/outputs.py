"""The outputs of the backends' autograd functions, and their gradients, in one order for every backend:
y (when C is given), then the last state (when asked), then every hidden state (when asked)."""


def pack_outputs(y, last, states, return_last_state, return_states):
    """The tuple an autograd function returns; ``y`` is None when C was not given."""
    outputs = [] if y is None else [y]
    if return_last_state:
        outputs.append(last)
    if return_states:
        outputs.append(states)
    return tuple(outputs)


def unpack_grads(grads, has_y, return_last_state, return_states):
    """(dy, dlast, dstates) from the gradients autograd passes to backward; None for what was not returned."""
    grads = list(grads)
    return tuple(grads.pop(0) if returned else None for returned in (has_y, return_last_state, return_states))

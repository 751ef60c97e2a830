import torch

import vssm


class TwoScans(torch.nn.Module):
    """A grouped scan with D and z, and a states-only scan, on the same sequence."""

    def __init__(self, channels=8, state=2):
        super().__init__()
        self.A = torch.nn.Parameter(-torch.rand(channels, state))
        self.D = torch.nn.Parameter(torch.ones(channels))
        self.channels, self.state = channels, state

    def forward(self, x):
        u = x.flatten(2)[:, : self.channels]
        batch, _, L = u.shape
        B = u[:, : self.state].unsqueeze(1)
        y = vssm.selective_scan(u, u, self.A, B, B, self.D, z=u, backend="naive")
        states = vssm.selective_scan(u, u, self.A, B[:, 0], None, return_states=True)
        return y.sum() + states.sum()


def test_scan_flops_follow_the_upstream_convention():
    batch, channels, state, L = 2, 8, 2, 16
    expected = 9 * batch * L * channels * state + 2 * batch * channels * L  # scan with D and z
    expected += 7 * batch * L * channels * state  # states-only scan
    assert vssm.count_flops(TwoScans(channels, state), (batch, 8, 4, 4)) == expected


def test_convolutions_are_counted_as_multiply_adds():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert vssm.count_flops(conv, (3, 8, 8)) == 8 * 8 * 4 * 3 * 9

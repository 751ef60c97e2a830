"""A literal transcription of the published Spatial-Mamba forward, for parity tests only.

Runs on a state dict in the authors' layout with plain tensor operations: channel-first convolutions,
the scan as an explicit loop producing every state, the three dilated fusion convolutions unfolded,
LayerNorms over channels. Nothing here is shared with vssm.
"""
import torch
import torch.nn.functional as F


def conv_layer(x, sd, p, stride=1, groups=1, act=True):
    w = sd[p + ".conv.weight"]
    x = F.conv2d(x, w, sd.get(p + ".conv.bias"), stride=stride, padding=w.shape[-1] // 2, groups=groups)
    if p + ".norm.weight" in sd:
        x = F.batch_norm(x, sd[p + ".norm.running_mean"], sd[p + ".norm.running_var"], sd[p + ".norm.weight"],
                         sd[p + ".norm.bias"], training=False, eps=1e-5)
    return F.relu(x) if act else x


def layer_norm_last(x, sd, p):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], 1e-5)


def states_loop(u, dt, A, B):
    """u, dt (b, e, l); A (e, 1); B (b, 1, l) -> every state (b, e, l) (N = 1)."""
    h = u.new_zeros(u.shape[:2])
    out = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[:, :, t] * A[:, 0]) * h + dt[:, :, t] * B[:, 0, t, None] * u[:, :, t]
        out.append(h)
    return torch.stack(out, dim=-1)


def ssm(x, sd, p):
    """x (b, h, w, c) -> (b, h, w, c)."""
    b, hh, ww, _ = x.shape
    xz = F.linear(x, sd[p + ".in_proj.weight"])
    x, z = xz.chunk(2, dim=-1)
    x = x.permute(0, 3, 1, 2)
    e = x.shape[1]
    x = F.silu(F.conv2d(x, sd[p + ".conv2d.weight"], sd[p + ".conv2d.bias"], padding=1, groups=e))
    xs = x.reshape(b, e, -1)
    x_dbl = torch.matmul(sd[p + ".x_proj_weight"], xs)  # (b, r + 2, l)
    r = x_dbl.shape[1] - 2
    dts, Bs, Cs = x_dbl.split([r, 1, 1], dim=1)
    dts = F.softplus(torch.matmul(sd[p + ".dt_projs_weight"], dts) + sd[p + ".dt_projs_bias"][:, None])
    h = states_loop(xs, dts, -torch.exp(sd[p + ".A_logs"]), Bs).view(b, e, hh, ww)
    fused = 0
    for i, (name, d) in enumerate((("kernel_3", 1), ("kernel_3_1", 3), ("kernel_3_2", 5))):
        k = sd[f"{p}.state_fusion.{name}"]
        fused = fused + sd[p + ".state_fusion.alpha"][i] * F.conv2d(F.pad(h, (d,) * 4, mode="replicate"), k,
                                                                      dilation=d, groups=e)
    y = fused.reshape(b, e, -1) * Cs + xs * sd[p + ".Ds"][:, None]
    y = y.view(b, e, hh, ww).permute(0, 2, 3, 1)
    y = layer_norm_last(y, sd, p + ".out_norm") * F.silu(z)
    return F.linear(y, sd[p + ".out_proj.weight"])


def reference_forward(sd, x, depths):
    x = conv_layer(x, sd, "patch_embed.conv1", stride=2)
    x = conv_layer(conv_layer(x, sd, "patch_embed.conv2.0"), sd, "patch_embed.conv2.1", act=False) + x
    x = conv_layer(conv_layer(x, sd, "patch_embed.conv3.0", stride=2), sd, "patch_embed.conv3.1", act=False)
    x = x.permute(0, 2, 3, 1)
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            c = x.shape[-1]
            x = x + F.conv2d(x.permute(0, 3, 1, 2), sd[p + ".cpe1.weight"], sd[p + ".cpe1.bias"], padding=1,
                             groups=c).permute(0, 2, 3, 1)
            x = x + ssm(layer_norm_last(x, sd, p + ".ln_1"), sd, p + ".self_attention")
            x = x + F.conv2d(x.permute(0, 3, 1, 2), sd[p + ".cpe2.weight"], sd[p + ".cpe2.bias"], padding=1,
                             groups=c).permute(0, 2, 3, 1)
            y = F.gelu(F.linear(layer_norm_last(x, sd, p + ".ln_2"), sd[p + ".mlp.fc1.weight"], sd[p + ".mlp.fc1.bias"]))
            x = x + F.linear(y, sd[p + ".mlp.fc2.weight"], sd[p + ".mlp.fc2.bias"])
        d = f"layers.{i}.downsample.conv"
        if d + ".0.conv.weight" in sd:
            y = conv_layer(x.permute(0, 3, 1, 2), sd, d + ".0")
            y = conv_layer(y, sd, d + ".1", stride=2, groups=y.shape[1])
            x = conv_layer(y, sd, d + ".2", act=False).permute(0, 2, 3, 1)
    x = layer_norm_last(x.flatten(1, 2), sd, "norm").mean(dim=1)
    return F.linear(x, sd["head.weight"], sd["head.bias"])

"""A literal, channel-first transcription of the published VMamba v2 forward, for parity tests only.

It runs on a state dict in the authors' key layout with plain tensor operations: LayerNorm over
channels by permuting, 1x1 projections as convolutions, the cross scan by flips and transposes, einsum
projections, and the selective scan as an explicit loop over time. Nothing here is shared with vssm.
"""
import torch
import torch.nn.functional as F


def ln2d(x, sd, prefix):
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], 1e-5)
    return x.permute(0, 3, 1, 2)


def conv1x1(x, weight, bias=None):
    return F.conv2d(x, weight.view(weight.shape[0], weight.shape[1], 1, 1), bias)


def scan_loop(u, dt, A, B, C, D, bias):
    """u, dt (b, kd, l); A (kd, n); B, C (b, k, n, l); D, bias (kd,)."""
    b, kd, l = u.shape
    k = B.shape[1]
    dt = F.softplus(dt + bias[:, None])
    Bx = B.repeat_interleave(kd // k, dim=1)  # (b, kd, n, l)
    Cx = C.repeat_interleave(kd // k, dim=1)
    h = u.new_zeros(b, kd, A.shape[1])
    ys = []
    for t in range(l):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    return torch.stack(ys, dim=-1) + D[:, None] * u


def ss2d(x, sd, p):
    x = conv1x1(x, sd[p + ".in_proj.weight"])
    x = F.silu(F.conv2d(x, sd[p + ".conv2d.weight"], padding=1, groups=x.shape[1]))
    b, d, h, w = x.shape
    l = h * w
    x_hwwh = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    xs = torch.cat([x_hwwh, x_hwwh.flip(-1)], dim=1)  # (b, 4, d, l)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, sd[p + ".x_proj_weight"])
    A = -torch.exp(sd[p + ".A_logs"])
    n = A.shape[1]
    r = x_dbl.shape[2] - 2 * n
    dts, Bs, Cs = x_dbl.split([r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, sd[p + ".dt_projs_weight"])
    ys = scan_loop(xs.reshape(b, -1, l), dts.reshape(b, -1, l), A, Bs, Cs, sd[p + ".Ds"],
                   sd[p + ".dt_projs_bias"].reshape(-1)).view(b, 4, d, l)
    inv = ys[:, 2:4].flip(-1)
    wh = ys[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, l)
    invwh = inv[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, l)
    y = (ys[:, 0] + inv[:, 0] + wh + invwh).view(b, d, h, w)
    y = ln2d(y, sd, p + ".out_norm")
    return conv1x1(y, sd[p + ".out_proj.weight"])


def reference_forward(sd, x, depths, mixer=None):
    """Logits of a VMamba v2 classifier with authors'-layout weights ``sd`` on images ``x``.

    ``mixer(x, sd, prefix, stage, index)``: the token mixer of block ``index`` of ``stage`` on the normalised
    (b, c, h, w) map (default: VMamba's ``ss2d``); the families built on this skeleton pass theirs.
    """
    mixer = mixer or (lambda x, sd, p, stage, index: ss2d(x, sd, p))
    x = F.conv2d(x, sd["patch_embed.0.weight"], sd["patch_embed.0.bias"], stride=2, padding=1)
    x = F.gelu(ln2d(x, sd, "patch_embed.2"))
    x = F.conv2d(x, sd["patch_embed.5.weight"], sd["patch_embed.5.bias"], stride=2, padding=1)
    x = ln2d(x, sd, "patch_embed.7")
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            x = x + mixer(ln2d(x, sd, p + ".norm"), sd, p + ".op", i, j)
            y = conv1x1(ln2d(x, sd, p + ".norm2"), sd[p + ".mlp.fc1.weight"], sd[p + ".mlp.fc1.bias"])
            x = x + conv1x1(F.gelu(y), sd[p + ".mlp.fc2.weight"], sd[p + ".mlp.fc2.bias"])
        if f"layers.{i}.downsample.1.weight" in sd:
            x = F.conv2d(x, sd[f"layers.{i}.downsample.1.weight"], sd[f"layers.{i}.downsample.1.bias"],
                         stride=2, padding=1)
            x = ln2d(x, sd, f"layers.{i}.downsample.3")
    x = ln2d(x, sd, "classifier.norm").mean(dim=(2, 3))
    return F.linear(x, sd["classifier.head.weight"], sd["classifier.head.bias"])


def to_conv_layout(sd):
    """The authors' layout variants: 1x1 projections as conv weights, scan projections as grouped conv1d."""
    out = {}
    for k, v in sd.items():
        if k.endswith(("in_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")):
            out[k] = v[:, :, None, None]
        elif k.endswith("x_proj_weight"):
            out[k.replace("x_proj_weight", "x_proj.weight")] = v.reshape(-1, v.shape[-1], 1)
        elif k.endswith("dt_projs_weight"):
            out[k.replace("dt_projs_weight", "dt_projs.weight")] = v.reshape(-1, v.shape[-1], 1)
        elif k.endswith("dt_projs_bias"):
            out[k.replace("dt_projs_bias", "dt_projs.bias")] = v.reshape(-1)
        else:
            out[k] = v
    return out


def to_per_direction_layout(sd):
    """Earlier names (ln_1, self_attention, top-level norm/head) and per-direction scan projections."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".op.", ".self_attention.")
        if ".blocks." in k:
            k = k.replace(".norm.", ".ln_1.")
        k = k.replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")
        if k.endswith(("x_proj_weight", "dt_projs_weight", "dt_projs_bias")):
            base, name = k.rsplit(".", 1)
            module, field = {"x_proj_weight": ("x_proj", "weight"), "dt_projs_weight": ("dt_projs", "weight"),
                             "dt_projs_bias": ("dt_projs", "bias")}[name]
            for i in range(v.shape[0]):
                out[f"{base}.{module}.{i}.{field}"] = v[i]
        else:
            out[k] = v
    return out

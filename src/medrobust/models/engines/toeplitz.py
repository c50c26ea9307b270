"""A convolution restricted to two small windows, as one dense matrix.

When a pixel's change reaches only a handful of a layer's input positions (the first layers of a
cone), a convolution call costs far more in fixed overhead than in arithmetic. The same result is
one matrix product: the change, flattened to (rows, positions x channels), times a matrix that
holds, for every (input position, output position) pair, the kernel tap joining them (zero where
none does). The matrix depends only on the windows' relative placement, so it is built once per
placement and reused.
"""

from __future__ import annotations

import torch


def conv_matrix(weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int], offset: tuple[int, int], in_size: tuple[int, int],
                out_size: tuple[int, int]) -> torch.Tensor:
    """(in_h * in_w * C_in, out_h * out_w * C_out) matrix of a groups=1 convolution.

    ``offset``: the input window's corner minus ``stride`` times the output window's corner,
    per axis (the placement the taps depend on). Rows are ordered (y, x, c_in) and columns
    (y, x, c_out), the order of channels-last windows.
    """
    c_out, c_in = weight.shape[:2]
    dev = weight.device  # the tap tables index and mask the weights where they live (GPU too)
    taps_y = _taps(offset[0], in_size[0], out_size[0], stride[0], padding[0], dilation[0],
                   weight.shape[2], dev)
    taps_x = _taps(offset[1], in_size[1], out_size[1], stride[1], padding[1], dilation[1],
                   weight.shape[3], dev)
    # (in_h, out_h) and (in_w, out_w) tap indices, -1 where the pair is not joined
    ky, kx = taps_y[:, None, :, None], taps_x[None, :, None, :]
    valid = (ky >= 0) & (kx >= 0)  # (in_h, in_w, out_h, out_w)
    w = weight.permute(2, 3, 1, 0)  # (kh, kw, c_in, c_out)
    blocks = w[ky.clamp(min=0), kx.clamp(min=0)]  # (in_h, in_w, out_h, out_w, c_in, c_out)
    blocks = blocks * valid[..., None, None]
    ih, iw, oh, ow = valid.shape
    return blocks.permute(0, 1, 4, 2, 3, 5).reshape(ih * iw * c_in, oh * ow * c_out).contiguous()


def _taps(offset: int, n_in: int, n_out: int, stride: int, padding: int, dilation: int,
          kernel: int, device: torch.device) -> torch.Tensor:
    """Kernel tap joining input a and output i on one axis (-1: none). Output i reads input
    i * stride - padding + k * dilation."""
    a = torch.arange(n_in, device=device)[:, None] + offset
    i = torch.arange(n_out, device=device)[None, :] * stride
    reach = a + padding - i
    k = torch.div(reach, dilation, rounding_mode="floor")
    ok = (reach % dilation == 0) & (k >= 0) & (k < kernel)
    return torch.where(ok, k, torch.full_like(k, -1))

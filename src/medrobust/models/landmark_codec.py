"""Heatmap + offset targets for landmarks, and decoding by offset voting (Yao et al., MICCAI 2020).

The multi-task U-Net predicts, per landmark k, a heatmap logit map and x/y offset maps; its 3K output
channels are ordered ``[heat_1..heat_K, xoff_1..xoff_K, yoff_1..yoff_K]``. Targets follow the authors'
code (qsyao/attack_landmark_detection, data_loader.py), evaluated at exact sub-pixel distances
instead of their integer stencil. For a pixel p = (column, row) and a landmark l = (x, y), with
d = ||l - p||_2 and radius R (0.05 x 200 = 10 px for the paper's 200x160 input):

    mask(p)   = 1 if d < R else 0                     (the disk)
    heat(p)   = exp(-d^2 / (2 R^2)) * mask(p)          (Gaussian-weighted disk, sigma = R)
    xoff(p)   = (x - p_x) / R * mask(p)                (in [-1, 1] inside the disk)
    yoff(p)   = (y - p_y) / R * mask(p)

Decoding: the top ``int(pi R^2)`` heatmap pixels of each landmark (the disk's area) each cast one
vote at p + R * offset(p), rounded to the nearest pixel and clipped to the image; votes are
accumulated on the pixel grid (``scatter_add``) and the cell with most votes wins (ties: the first
cell in row-major order). Sub-pixel refinement: the landmark is the mean of the unrounded vote
positions that fell into the winning cell (the authors return the integer cell; the mean keeps
their argmax and removes up to 0.5 px of quantisation). All batched in torch, no Python loop over
pixels or landmarks.
"""

from __future__ import annotations

import math

import torch

#: The paper's radius as a fraction of the input height (0.05 x 200 = 10 px).
RADIUS_FRACTION = 0.05


def default_radius(shape: tuple[int, int]) -> float:
    """The authors' R = int(0.05 x max(H, W)), at least 2 px."""
    return float(max(2, int(max(shape) * RADIUS_FRACTION)))


def encode(landmarks: torch.Tensor, shape: tuple[int, int], radius: float
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets for (B, K, 2) landmarks (x, y in pixels) on an (H, W) grid.

    Returns ``heatmap`` (B, K, H, W) in [0, 1], ``offsets`` (B, 2K, H, W) ordered
    [x offsets of the K landmarks, then y offsets], and the binary disk ``mask`` (B, K, H, W).
    Landmarks near or beyond the border simply get a truncated disk.
    """
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    h, w = int(shape[0]), int(shape[1])
    pts = torch.as_tensor(landmarks, dtype=torch.float32)
    if pts.ndim != 3 or pts.shape[-1] != 2:
        raise ValueError(f"landmarks must be (B, K, 2), got {tuple(pts.shape)}")
    cols = torch.arange(w, dtype=torch.float32, device=pts.device).view(1, 1, 1, w)
    rows = torch.arange(h, dtype=torch.float32, device=pts.device).view(1, 1, h, 1)
    dx = pts[..., 0, None, None] - cols  # (B, K, 1, W)
    dy = pts[..., 1, None, None] - rows  # (B, K, H, 1)
    d2 = dx.square() + dy.square()       # (B, K, H, W)
    mask = (d2 < radius * radius).to(torch.float32)
    heat = torch.exp(-d2 / (2.0 * radius * radius)) * mask
    xoff = (dx / radius) * mask
    yoff = (dy / radius) * mask
    return heat, torch.cat([xoff, yoff], dim=1), mask


def split_outputs(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3K, H, W) -> heatmap logits, x offsets, y offsets, each (B, K, H, W)."""
    if outputs.ndim != 4 or outputs.shape[1] % 3:
        raise ValueError(f"outputs must be (B, 3K, H, W), got {tuple(outputs.shape)}")
    k = outputs.shape[1] // 3
    return outputs[:, :k], outputs[:, k:2 * k], outputs[:, 2 * k:]


@torch.no_grad()
def decode(outputs: torch.Tensor, radius: float, refine: bool = True) -> torch.Tensor:
    """(B, 3K, H, W) network outputs -> (B, K, 2) landmarks (x, y in pixels) by offset voting.

    Only the ranking of the heatmap channels matters, so logits and probabilities decode alike.
    """
    heat, xoff, yoff = split_outputs(outputs.detach().float())
    b, k, h, w = heat.shape
    n = min(h * w, max(1, int(math.pi * radius * radius)))
    _, idx = heat.reshape(b, k, h * w).topk(n, dim=-1)           # (B, K, n)
    px = (idx % w).to(torch.float32)
    py = torch.div(idx, w, rounding_mode="floor").to(torch.float32)
    vx = px + xoff.reshape(b, k, h * w).gather(-1, idx) * radius
    vy = py + yoff.reshape(b, k, h * w).gather(-1, idx) * radius
    cx = vx.round().clamp(0, w - 1).long()
    cy = vy.round().clamp(0, h - 1).long()
    cell = cy * w + cx                                            # (B, K, n)
    votes = torch.zeros(b, k, h * w, dtype=torch.float32, device=heat.device)
    votes.scatter_add_(-1, cell, torch.ones_like(vx))
    best = votes.argmax(dim=-1, keepdim=True)                     # (B, K, 1)
    bx = (best % w).to(torch.float32).squeeze(-1)
    by = torch.div(best, w, rounding_mode="floor").to(torch.float32).squeeze(-1)
    if not refine:
        return torch.stack([bx, by], dim=-1)
    inside = (cell == best).to(torch.float32)                      # votes in the winning cell
    count = inside.sum(-1).clamp_min(1.0)
    rx = (vx.clamp(-0.5, w - 0.5) * inside).sum(-1) / count
    ry = (vy.clamp(-0.5, h - 0.5) * inside).sum(-1) / count
    return torch.stack([rx, ry], dim=-1)

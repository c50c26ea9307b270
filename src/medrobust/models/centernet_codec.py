"""CenterNet targets from boxes (``encode``) and boxes from network outputs (``decode``).

Both are batched torch. Boxes are xyxy in input pixels (x = column); the network works at
``stride`` (4), so an object's centre falls in output cell floor(centre / stride), whose heatmap
peak is a Gaussian of CenterNet's radius rule, and the size (w, h) / offset (sub-cell centre)
targets are read at that cell only (``index``, ``mask``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medrobust.models.centernet import split_outputs

Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CenterNet's radius: the largest corner shift keeping IoU >= ``min_overlap`` in 3 cases.

    This is the original implementation (including its well-known quirks, kept so heatmaps match
    published CenterNet training); inputs in output pixels.
    """
    h, w = height, width
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def encode(boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], out_shape: tuple[int, int],
           num_classes: int, stride: int = 4, max_objects: int | None = None,
           min_overlap: float = 0.7) -> dict[str, torch.Tensor]:
    """Training targets for a batch.

    ``boxes[i]`` (n_i, 4) xyxy input pixels, ``labels[i]`` (n_i,) class indices; ``out_shape``
    (h, w) of the output map. Returns ``heatmap`` (B, C, h, w) in [0, 1] with exact 1 at each
    centre cell; ``size`` (B, K, 2) (w, h) and ``offset`` (B, K, 2) (dx, dy) in output pixels;
    ``index`` (B, K) flat cell index; ``mask`` (B, K) bool. K = ``max_objects`` or the largest
    n_i (objects beyond K are left out of the regression targets, never out of the heatmap).
    """
    bsz = len(boxes)
    if len(labels) != bsz:
        raise ValueError(f"{bsz} box sets but {len(labels)} label sets")
    oh, ow = int(out_shape[0]), int(out_shape[1])
    device = boxes[0].device if bsz else torch.device("cpu")
    counts = [int(b.shape[0]) for b in boxes]
    k = max(counts, default=0) if max_objects is None else int(max_objects)
    k = max(k, 1)
    heat = torch.zeros(bsz * num_classes, oh * ow, device=device)
    size = torch.zeros(bsz, k, 2, device=device)
    offset = torch.zeros(bsz, k, 2, device=device)
    index = torch.zeros(bsz, k, dtype=torch.long, device=device)
    mask = torch.zeros(bsz, k, dtype=torch.bool, device=device)
    if sum(counts) == 0:
        return {"heatmap": heat.view(bsz, num_classes, oh, ow), "size": size, "offset": offset,
                "index": index, "mask": mask}
    all_boxes = torch.cat([b.reshape(-1, 4).float() for b in boxes]).to(device) / stride
    all_labels = torch.cat([lab.reshape(-1).long() for lab in labels]).to(device)
    if (all_labels < 0).any() or (all_labels >= num_classes).any():
        raise ValueError(f"labels must lie in [0, {num_classes})")
    image = torch.repeat_interleave(torch.arange(bsz, device=device),
                                    torch.tensor(counts, device=device))
    slot = torch.cat([torch.arange(n, device=device) for n in counts])
    w = (all_boxes[:, 2] - all_boxes[:, 0]).clamp(min=0)
    h = (all_boxes[:, 3] - all_boxes[:, 1]).clamp(min=0)
    centre = torch.stack([(all_boxes[:, 0] + all_boxes[:, 2]) / 2,
                          (all_boxes[:, 1] + all_boxes[:, 3]) / 2], dim=1)
    cell = centre.floor()
    cell[:, 0].clamp_(0, ow - 1)
    cell[:, 1].clamp_(0, oh - 1)
    cell_long = cell.long()
    radius = gaussian_radius(h.ceil(), w.ceil(), min_overlap).floor().clamp(min=0)
    sigma = (2 * radius + 1) / 6
    xs = torch.arange(ow, device=device, dtype=torch.float32)
    ys = torch.arange(oh, device=device, dtype=torch.float32)
    dx = xs[None, :] - cell[:, :1]  # (n, ow)
    dy = ys[None, :] - cell[:, 1:]  # (n, oh)
    gx = torch.exp(-dx ** 2 / (2 * sigma[:, None] ** 2)) * (dx.abs() <= radius[:, None])
    gy = torch.exp(-dy ** 2 / (2 * sigma[:, None] ** 2)) * (dy.abs() <= radius[:, None])
    gauss = (gy[:, :, None] * gx[:, None, :]).reshape(-1, oh * ow)
    flat = cell_long[:, 1] * ow + cell_long[:, 0]
    gauss[torch.arange(len(flat), device=device), flat] = 1.0  # exact peak even for radius 0
    rows = (image * num_classes + all_labels)[:, None].expand(-1, oh * ow)
    heat.scatter_reduce_(0, rows, gauss, "amax", include_self=True)
    keep = slot < k
    b_i, s_i = image[keep], slot[keep]
    size[b_i, s_i] = torch.stack([w, h], dim=1)[keep]
    offset[b_i, s_i] = (centre - cell)[keep]
    index[b_i, s_i] = flat[keep]
    mask[b_i, s_i] = True
    return {"heatmap": heat.view(bsz, num_classes, oh, ow), "size": size, "offset": offset,
            "index": index, "mask": mask}


def gather_cells(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Values of (B, D, h, w) ``maps`` at flat cells ``index`` (B, K) -> (B, K, D)."""
    bsz, d = maps.shape[:2]
    flat = maps.reshape(bsz, d, -1)
    return flat.gather(2, index[:, None, :].expand(bsz, d, index.shape[1])).transpose(1, 2)


@torch.no_grad()
def decode(outputs: torch.Tensor, num_classes: int | None = None, k: int = 100,
           score_threshold: float = 0.01, stride: int = 4,
           image_size: tuple[int, int] | None = None) -> list[Detections]:
    """Per image (boxes (n, 4) xyxy input pixels, scores (n,), labels (n,) int64), best first.

    Peaks are heatmap cells equal to their 3x3 max-pool (CenterNet's NMS), then the top ``k``
    over all classes and cells, then ``score >= score_threshold``. Boxes are clipped to the
    input (``image_size`` (H, W), default output size x stride). ``num_classes`` defaults to
    channels - 4.
    """
    c = outputs.shape[1] - 4 if num_classes is None else num_classes
    logits, size, offset = split_outputs(outputs.float(), c)
    bsz, _, oh, ow = logits.shape
    heat = torch.sigmoid(logits)
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    k = min(int(k), c * oh * ow)
    scores, flat = peaks.reshape(bsz, -1).topk(k, dim=1)
    label = flat // (oh * ow)
    cell = flat % (oh * ow)
    wh = gather_cells(size, cell).clamp(min=0)
    off = gather_cells(offset, cell)
    cx = ((cell % ow).float() + off[..., 0]) * stride
    cy = ((cell // ow).float() + off[..., 1]) * stride
    half_w, half_h = wh[..., 0] * stride / 2, wh[..., 1] * stride / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)
    height, width = image_size if image_size is not None else (oh * stride, ow * stride)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    out: list[Detections] = []
    for i in range(bsz):
        keep = scores[i] >= score_threshold
        out.append((boxes[i][keep], scores[i][keep], label[i][keep].long()))
    return out


def output_shape(image_size: tuple[int, int], stride: int = 4) -> tuple[int, int]:
    """(h, w) of the detector output for an (H, W) input (stride-2 convs with padding round up)."""
    h, w = image_size
    for _ in range(int(math.log2(stride))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w

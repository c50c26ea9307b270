"""Where a cone's change lives within one engine call, and how changes move between windows.

The cone engine carries, for every spatial layer, only the *change* a candidate pixel makes to
the clean activation, on a small window. A call is either

* **uniform**: every row is the same pixel of the same image (confidence maps). Origins are
  Python ints and each layer's window is that pixel's exact cone, so moving data is slicing; or
* **mixed**: rows are different pixels (attacks). Origins are per-row tensors and windows have one
  fixed length per layer, not clipped to the map (see ``cone_plan.Spatial.length``); rows that
  all move the same way are sliced, others gathered or scattered.

On a CPU every map is kept channels-last (NHWC in memory): a spatial window of it is then a run of
whole channel vectors, so slicing, pasting and broadcasting windows are dense loops (10x faster on
a CPU than the same on NCHW windows a few pixels wide), and oneDNN convolutions take it natively.
On a GPU maps stay NCHW: cuDNN's float32 convolutions on these small windows ran 1.2-1.5x faster
in NCHW than in NHWC, and its NHWC path converted layouts around every call (H100, cuDNN 9.19;
``benchmarks/gpu_engine.py``), while a strided window copy costs a GPU next to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHANNELS_LAST = torch.channels_last


def gpu_style(device: torch.device) -> bool:
    """True where the engine keeps maps NCHW and convolves every change directly (GPUs; see
    the module docstring and ``cone_plan.DELTA_AREA``). Tests switch it on for CPU tensors to
    check those paths' exactness without a GPU."""
    return device.type != "cpu"


def layout(device: torch.device) -> torch.memory_format:
    """The memory format of every engine map on ``device`` (see the module docstring)."""
    return torch.contiguous_format if gpu_style(device) else CHANNELS_LAST

#: (row, column) of a window's top-left corner: ints (uniform) or (M,) tensors (mixed).
Origin = tuple[int | torch.Tensor, int | torch.Tensor]


@dataclass(frozen=True)
class Chunk:
    """One engine call: image index, pixel row and column per candidate."""

    img: torch.Tensor  # (M,) long
    y: torch.Tensor
    x: torch.Tensor
    uniform: bool

    @property
    def rows(self) -> int:
        return int(self.img.shape[0])

    @property
    def image(self) -> int:
        """The shared image of a uniform chunk."""
        return int(self.img[0])


def place(delta: torch.Tensor, at: Origin, origin: Origin, size: tuple[int, int],
          chunk: Chunk) -> torch.Tensor:
    """``delta`` (top-left corner at ``at``) on the window at ``origin``: zero where it does not
    reach, its parts outside the window dropped. Returns ``delta`` itself (or a view of it) when
    it already covers exactly that window."""
    if chunk.uniform:
        return _place_uniform(delta, (int(at[0]), int(at[1])), (int(origin[0]), int(origin[1])),
                              size)
    shift = _common_shift(at, origin)
    if shift is not None:  # every row moves the same way: slicing, as for one pixel
        return _place_uniform(delta, shift, (0, 0), size)
    return _place_mixed(delta, at, origin, size)


def _place_uniform(delta: torch.Tensor, at: tuple[int, int], origin: tuple[int, int],
                   size: tuple[int, int]) -> torch.Tensor:
    y0, x0 = at[0] - origin[0], at[1] - origin[1]  # delta's corner inside the window
    h, w = delta.shape[2], delta.shape[3]
    if y0 == 0 and x0 == 0 and (h, w) == tuple(size):
        return delta
    if y0 <= 0 and x0 <= 0 and y0 + h >= size[0] and x0 + w >= size[1]:
        return delta[:, :, -y0:size[0] - y0, -x0:size[1] - x0]
    out = zeros(delta, delta.shape[0], delta.shape[1], size[0], size[1])
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, size[0]), min(x0 + w, size[1])
    if ya < yb and xa < xb:
        out[:, :, ya:yb, xa:xb] = delta[:, :, ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def add_into(out: torch.Tensor, delta: torch.Tensor, at: Origin, origin: Origin,
             chunk: Chunk, sign: float = 1.0) -> torch.Tensor:
    """Add ``sign * delta`` (top-left at ``at``) into ``out`` (the window at ``origin``),
    in place, dropping what falls outside."""
    shift = (int(at[0]) - int(origin[0]), int(at[1]) - int(origin[1])) if chunk.uniform else \
        _common_shift(at, origin)
    if shift is None:
        placed = _place_mixed(delta, at, origin, (out.shape[2], out.shape[3]))
        return out.add_(placed, alpha=sign)
    y0, x0 = shift
    h, w = delta.shape[2], delta.shape[3]
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, out.shape[2]), min(x0 + w, out.shape[3])
    if ya < yb and xa < xb:
        out[:, :, ya:yb, xa:xb].add_(delta[:, :, ya - y0:yb - y0, xa - x0:xb - x0], alpha=sign)
    return out


def _common_shift(at: Origin, origin: Origin) -> tuple[int, int] | None:
    """``at - origin`` when it is the same for every row (None otherwise)."""
    dy, dx = at[0] - origin[0], at[1] - origin[1]
    lo_y, hi_y = (int(dy.min()), int(dy.max())) if isinstance(dy, torch.Tensor) else (dy, dy)
    lo_x, hi_x = (int(dx.min()), int(dx.max())) if isinstance(dx, torch.Tensor) else (dx, dx)
    return (lo_y, lo_x) if lo_y == hi_y and lo_x == hi_x else None


def _place_mixed(delta: torch.Tensor, at: Origin, origin: Origin,
                 size: tuple[int, int]) -> torch.Tensor:
    m, c, h, w = delta.shape
    dev = delta.device
    # Channels-last, a window is a stack of channel vectors: copy them row by row into a
    # (M * (positions + 1), C) buffer whose spare position per candidate takes what falls
    # outside the window (dropped), so the whole move is one index_copy_.
    slots = size[0] * size[1] + 1
    out = delta.new_zeros(m * slots, c)
    r = _rowwise(at[0] - origin[0], m, dev)[:, None] + torch.arange(h, device=dev)
    q = _rowwise(at[1] - origin[1], m, dev)[:, None] + torch.arange(w, device=dev)
    valid = ((r >= 0) & (r < size[0]))[:, :, None] & ((q >= 0) & (q < size[1]))[:, None, :]
    flat = torch.where(valid, r[:, :, None] * size[1] + q[:, None, :], slots - 1)
    flat = flat + (torch.arange(m, device=dev) * slots)[:, None, None]
    out.index_copy_(0, flat.reshape(-1), delta.permute(0, 2, 3, 1).reshape(m * h * w, c))
    return out.view(m, slots, c)[:, :-1].view(m, size[0], size[1], c).permute(0, 3, 1, 2)


def gather(base: torch.Tensor, origin: Origin, size: tuple[int, int], chunk: Chunk,
           margin: int = 0) -> torch.Tensor:
    """Windows of a (B,C,H,W) clean map at ``origin`` (map coordinates; ``base`` is the map
    padded by ``margin`` on every side). Uniform chunks get one (1,C,h,w) window shared by all
    rows; mixed chunks get (M,C,h,w)."""
    if chunk.uniform:
        i, r, c = chunk.image, int(origin[0]) + margin, int(origin[1]) + margin
        # contiguous: broadcasting it over the rows is then one flat loop (10x faster on CPU
        # than broadcasting a strided window with a short inner dimension)
        return base[i:i + 1, :, r:r + size[0], c:c + size[1]].contiguous(
            memory_format=layout(base.device))
    dev = base.device
    m = chunk.rows
    b, c, hh, ww = base.shape
    rows = _rowwise(origin[0] + margin, m, dev)[:, None] + torch.arange(size[0], device=dev)
    cols = _rowwise(origin[1] + margin, m, dev)[:, None] + torch.arange(size[1], device=dev)
    # one channel vector per window position, picked from the (B*H*W, C) view of the map
    flat = (chunk.img * (hh * ww))[:, None, None] + rows[:, :, None] * ww + cols[:, None, :]
    picked = base.permute(0, 2, 3, 1).reshape(b * hh * ww, c).index_select(0, flat.reshape(-1))
    return picked.view(m, size[0], size[1], c).permute(0, 3, 1, 2)


def zeros(like: torch.Tensor, n: int, c: int, h: int, w: int) -> torch.Tensor:
    """An (N,C,H,W) tensor of zeros in the engine's layout; on a CPU, (N,H,W,C) zeros seen
    through a permute (one allocation; converting NCHW zeros to channels-last costs 7x more)."""
    if layout(like.device) is not CHANNELS_LAST:
        return torch.zeros((n, c, h, w), dtype=like.dtype, device=like.device)
    return torch.zeros((n, h, w, c), dtype=like.dtype, device=like.device).permute(0, 3, 1, 2)


def engine_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the engine's layout for its device (maps only)."""
    return t.contiguous(memory_format=layout(t.device)) if t.dim() == 4 else t


def _rowwise(v: int | torch.Tensor, m: int, device: torch.device) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.full((m,), int(v), device=device)

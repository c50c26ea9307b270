"""Planning the cone engine: what each traced node does to a one-pixel change.

The engine carries only the change a pixel makes to each activation (zero outside its cone).
Most layers act on that change directly, because they are linear: a convolution of the change
(no bias), a per-channel scale (batch norm in eval mode, arithmetic with constants), a shift
(Keras padding), a sum (residual additions), a concatenation, average pooling, global pooling.
Batch norm right after a convolution costs nothing: its scale is folded into the convolution's
weights. Nonlinear layers (ReLU, other activations, max pooling, products of maps) rebuild the
values on the cone's window, apply the layer, and subtract the clean output.

Rules of a spatial node (its activation is a (B,C,H,W) map, changed only inside a band):

=========  =====================================================================================
input      the perturbed image: the new colour minus the clean one, at the pixel
alias      the change passes through unchanged (identity, dropout in eval, adding a constant,
           batch norm folded into the convolution before it)
shift      the change moves with the data (Keras 'same' padding)
scale      the change times a per-channel factor (batch norm in eval mode, constant arithmetic)
conv       convolution of the change (any stride, padding, dilation, groups)
avgpool    average pooling of the change
sum        sum or difference of several changed maps
cat        channel concatenation of changed maps
relu       ReLU of clean plus change, minus clean
pool       max pooling: values rebuilt on the window, pooled, clean subtracted
value      any other pointwise op or combination: values in, values out, clean subtracted
=========  =====================================================================================

Anything else is computed densely from that layer on (exact, slower); see ``Dense``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from medrobust.models.engines import windows
from medrobust.models.engines.boxes import Band, shifted, sliding, union
from medrobust.models.layers import SamePad2d

_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d)
_POINTWISE_MODULES = (nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                      nn.Hardtanh, nn.Mish, nn.Softplus)
_RELU = {F.relu, torch.relu}
_POINTWISE_FUNCTIONS = {torch.sigmoid, torch.tanh, F.gelu, F.silu, F.leaky_relu}
_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
               torch.mul, torch.div}
_ADDITIVE = {operator.add, operator.sub, torch.add, torch.sub}
_SUBTRACT = {operator.sub, torch.sub}

#: On a CPU a stride-1 convolution scatters its input's change through the kernel (one
#: transposed convolution) when the input window is at most this share of the output window;
#: otherwise it convolves the (zero-padded) change over the output window. Scattering does fewer
#: multiply-adds whenever the input window is the smaller one, which a cone's always is. On a GPU
#: every convolution is direct: cuDNN's transposed convolution of these windows ran 3-12x slower
#: than the direct one in spite of doing half the multiply-adds (H100, float32; for 32,768 rows:
#: 64 channels 5x5 -> 7x7 took 19.6 ms scattered and 4.5 ms direct).
DELTA_AREA = 1.0


class ConeTracer(fx.Tracer):
    """Keeps SamePad2d whole: its padding depends on the input size, which fx cannot trace."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SamePad2d) or super().is_leaf_module(m, qualname)


@dataclass
class Spatial:
    """Plan for a node whose activation is a (B,C,H,W) map changed only inside a band."""

    rows: Band
    cols: Band
    rule: str
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    fill: float = 0.0  # pool: what positions outside the map read
    offset: tuple[int, int] = (0, 0)  # shift: how far the data moves
    factor: Any = None  # scale: the change's multiplier
    weight: torch.Tensor | None = None  # conv: weight, any following batch norm folded in
    weight_t: torch.Tensor | None = None  # conv: the same, arranged for a transposed convolution
    groups: int = 1
    transposed: bool = False  # conv: scatter the input's change (see DELTA_AREA)
    margin: int = 0  # pool: how far windows may read outside the map
    # Mixed calls: one window length per axis and each input position's window start. These
    # windows are not clipped to the map: layer to layer they line up exactly (a transposed
    # convolution's output is the next window as it is), and the parts outside the map are
    # zeroed instead (``overhangs``).
    length: tuple[int, int] = (1, 1)
    starts: tuple[torch.Tensor, torch.Tensor] | None = None
    overhangs: bool = False  # a mixed call's window of this node can leave the map
    masked: bool = False  # ... and its change there must be zeroed before it is read
    # Uniform calls: each input position's exact window, as (start, length) per axis.
    exact: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
    # The node's change is a tensor no other node holds, so its one consumer may update it in
    # place (saves an allocation and a pass over memory).
    mutable: bool = False

    def window(self, y: int, x: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Origin and size of the exact window of pixel (x, y)."""
        (r, h), (c, w) = self.exact[0][y], self.exact[1][x]
        return (r, c), (h, w)


@dataclass
class Dense:
    """Plan for a node computed per candidate in full (``gap``: global average pooling, which
    folds the window's change into the clean pooled vector)."""

    rule: str  # gap | op


def pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ConePlanner:
    """Walks a traced graph once and gives every node its rule (None: input-independent)."""

    def __init__(self, graph: fx.GraphModule, clean: dict[str, Any], images: torch.Tensor):
        self.graph = graph
        self.modules = dict(graph.named_modules())
        self.clean = clean
        self.images = images

    def plan(self) -> dict[str, Spatial | Dense | None]:
        plan: dict[str, Spatial | Dense | None] = {}
        for node in self.graph.graph.nodes:
            kind = self._node(node, plan)
            if isinstance(kind, Spatial):
                kind.exact = (_exact(kind.rows), _exact(kind.cols))
            plan[node.name] = kind
        self.margin = self._loose_windows(plan)
        self._masks(plan)
        self._ownership(plan)
        on_cpu = not windows.gpu_style(self.images.device)
        for node in self.graph.graph.nodes:  # weights are final once every batch norm is folded
            kind = plan[node.name]
            if isinstance(kind, Spatial) and kind.rule == "conv":
                src = plan[node.all_input_nodes[0].name]
                kind.transposed = on_cpu and kind.stride == (1, 1) and (
                    src.length[0] * src.length[1] <= DELTA_AREA * kind.length[0] * kind.length[1])
                assert kind.weight is not None
                kind.weight = kind.weight.contiguous()
                if kind.transposed:
                    kind.weight_t = _transposed(kind.weight, kind.groups)
        return plan

    def _loose_windows(self, plan: dict[str, Any]) -> int:
        """Unclipped fixed-length windows for mixed calls (see ``Spatial.length``); returns how
        far any window, or any span a window's outputs read, reaches outside its map."""
        loose: dict[str, tuple[tuple[np.ndarray, int], tuple[np.ndarray, int]]] = {}
        margin = 0
        for node in self.graph.graph.nodes:
            kind = plan[node.name]
            if not isinstance(kind, Spatial):
                continue
            srcs = [loose[n.name] for n in node.all_input_nodes if n.name in loose]
            size = self.clean[node.name].shape[2:]
            axes = []
            for axis in (0, 1):
                start, length = self._loose_axis(kind, [s[axis] for s in srcs], axis)
                if length >= size[axis]:  # deep cones: the whole map, clipped as it is
                    start, length = np.zeros_like(start), int(size[axis])
                axes.append((start, length))
                reach = max(0, -int(start.min()), int((start + length).max()) - int(size[axis]))
                kind.overhangs = kind.overhangs or reach > 0
                margin = max(margin, reach)
                if kind.rule in ("conv", "pool", "avgpool"):  # the span the outputs read
                    k, st, p, d = (kind.kernel[axis], kind.stride[axis], kind.padding[axis],
                                   kind.dilation[axis])
                    src_size = self.clean[node.all_input_nodes[0].name].shape[2 + axis]
                    first = start * st - p
                    last = (start + length - 1) * st - p + (k - 1) * d
                    margin = max(margin, -int(first.min()), int(last.max()) + 1 - int(src_size))
            loose[node.name] = (axes[0], axes[1])
            dev = self.images.device
            kind.length = (axes[0][1], axes[1][1])
            kind.starts = (torch.from_numpy(axes[0][0]).to(dev),
                           torch.from_numpy(axes[1][0]).to(dev))
        return margin

    def _masks(self, plan: dict[str, Any]) -> None:
        """Which overhanging changes must be zeroed outside the map. A convolution, pooling or
        generic op can leave nonzero values there; a ReLU clears them (mixed calls read its clean
        input padded with -inf), and linear passes (alias, scale, shift, sum, cat) hand them on
        to their own readers. Everything else needs them zero."""
        needs_zero: dict[str, bool] = {}
        for node in reversed(list(self.graph.graph.nodes)):
            kind = plan[node.name]
            if not isinstance(kind, Spatial):
                continue
            need = False
            for user in node.users:
                ukind = plan[user.name]
                if isinstance(ukind, Spatial) and ukind.rule == "relu":
                    continue
                if isinstance(ukind, Spatial) and ukind.rule in ("alias", "scale", "shift",
                                                                "sum", "cat"):
                    need = need or needs_zero[user.name]
                else:
                    need = True
            needs_zero[node.name] = need
            kind.masked = kind.overhangs and need and kind.rule in ("conv", "pool", "avgpool",
                                                                     "value")

    def _loose_axis(self, kind: Spatial, srcs: list[tuple[np.ndarray, int]], axis: int
                    ) -> tuple[np.ndarray, int]:
        if kind.rule == "input":
            return np.arange(self.images.shape[2 + axis], dtype=np.int64), 1
        if kind.rule == "shift":
            start, length = srcs[0]
            return start + kind.offset[axis], length
        if kind.rule in ("conv", "pool", "avgpool"):
            (a, n), k = srcs[0], kind.kernel[axis]
            s, p, d = kind.stride[axis], kind.padding[axis], kind.dilation[axis]
            lo = -((-(a + p - (k - 1) * d)) // s)  # first output that reads the window
            hi = (a + n - 1 + p) // s  # last one
            return lo, max(int((hi - lo + 1).max()), 1)
        if len(srcs) == 1:  # alias, scale, relu, pointwise
            return srcs[0]
        lo = np.min([st for st, _ in srcs], axis=0)  # sum, cat, value: the union
        hi = np.max([st + n - 1 for st, n in srcs], axis=0)
        return lo, int((hi - lo + 1).max())

    def _ownership(self, plan: dict[str, Any]) -> None:
        """A change may be updated in place by its consumer when it was computed fresh (aliases
        and shifts hand on their source's tensor) and exactly one node reads it."""
        fresh: dict[str, bool] = {}
        for node in self.graph.graph.nodes:
            kind = plan[node.name]
            if not isinstance(kind, Spatial):
                continue
            if kind.rule in ("alias", "shift"):
                src = node.all_input_nodes[0]
                fresh[node.name] = fresh[src.name] and len(src.users) == 1
            else:
                fresh[node.name] = True
            # one reader that reads it once (y + y reads y twice: it must stay intact)
            kind.mutable = fresh[node.name] and len(node.users) == 1 and _reads(
                next(iter(node.users)), node) == 1

    def is_map(self, node: fx.Node) -> bool:
        v = self.clean.get(node.name)
        return isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == self.images.shape[0]

    def _node(self, node: fx.Node, plan: dict[str, Any]) -> Spatial | Dense | None:
        if node.op == "placeholder":
            _, _, h, w = self.images.shape
            return Spatial(Band.identity(h), Band.identity(w), "input")
        if node.op in ("get_attr", "output"):
            return None if node.op == "get_attr" else Dense("op")
        kinds = [plan[i.name] for i in node.all_input_nodes]
        if all(k is None for k in kinds):
            return None
        if any(isinstance(k, Dense) for k in kinds) or not self.is_map(node):
            if node.op == "call_module" and isinstance(self.modules[node.target],
                                                       nn.AdaptiveAvgPool2d):
                return _gap_or_dense(self.modules[node.target], kinds)
            return Dense("op")
        spatial = [k for k in kinds if isinstance(k, Spatial)]
        if node.op == "call_module":
            return self._module(node, self.modules[node.target], spatial[0], kinds, plan)
        if node.op == "call_function":
            return self._function(node, spatial, kinds, plan)
        if node.op == "call_method" and len(spatial) == 1:
            if node.target == "relu":
                return _like(spatial[0], "relu")
            if node.target in ("sigmoid", "tanh"):
                return _like(spatial[0], "value")
        return Dense("op")

    def _module(self, node: fx.Node, m: nn.Module, src: Spatial, kinds: list[Any],
                plan: dict[str, Any]) -> Spatial | Dense:
        out = self.clean[node.name]
        oh, ow = int(out.shape[2]), int(out.shape[3])
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            kind = _windowed(src, m.kernel_size, m.stride, m.padding, m.dilation, oh, ow, "conv")
            kind.weight, kind.groups = m.weight.detach(), m.groups
            return kind
        if isinstance(m, nn.MaxPool2d) and not m.ceil_mode:
            kind = _windowed(src, m.kernel_size, m.stride or m.kernel_size, m.padding,
                             m.dilation, oh, ow, "pool")
            kind.fill = float("-inf")
            kind.margin = max(kind.padding) + max(kind.kernel) * max(kind.dilation) + 1
            return kind
        if isinstance(m, nn.AvgPool2d) and not m.ceil_mode and (
                m.count_include_pad or pair(m.padding) == (0, 0)) and m.divisor_override is None:
            return _windowed(src, m.kernel_size, m.stride or m.kernel_size, m.padding, 1, oh, ow,
                             "avgpool")
        if isinstance(m, SamePad2d):
            inp = self.clean[node.all_input_nodes[0].name]
            left, _, top, _ = m.pads(int(inp.shape[2]), int(inp.shape[3]))
            return Spatial(shifted(src.rows, top, oh), shifted(src.cols, left, ow), "shift",
                           offset=(top, left))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return _gap_or_dense(m, kinds)
        if isinstance(m, nn.BatchNorm2d) and not m.training and m.running_var is not None:
            return self._batch_norm(node, m, src, plan)
        if isinstance(m, _PASS_THROUGH) and not m.training:
            return _like(src, "alias")
        if isinstance(m, nn.ReLU):
            return _like(src, "relu")
        if isinstance(m, _POINTWISE_MODULES):
            return _like(src, "value")
        return Dense("op")

    def _batch_norm(self, node: fx.Node, m: nn.BatchNorm2d, src: Spatial,
                    plan: dict[str, Any]) -> Spatial:
        """Eval-mode batch norm scales the change per channel; right after a convolution that
        feeds nothing else, the scale goes into the convolution's weights instead."""
        scale = torch.rsqrt(m.running_var.detach() + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach()
        inp = node.all_input_nodes[0]
        if src.rule == "conv" and len(inp.users) == 1 and plan[inp.name] is src:
            assert src.weight is not None
            src.weight = src.weight * scale.view(-1, 1, 1, 1)
            return _like(src, "alias")
        kind = _like(src, "scale")
        kind.factor = scale.view(1, -1, 1, 1)
        return kind

    def _function(self, node: fx.Node, spatial: list[Spatial], kinds: list[Any],
                  plan: dict[str, Any]) -> Spatial | Dense:
        fn = node.target
        if len(spatial) == 1 and fn in _RELU:
            return _like(spatial[0], "relu")
        if len(spatial) == 1 and fn in _POINTWISE_FUNCTIONS:
            return _like(spatial[0], "value")
        if fn is torch.cat and _cat_dim(node) == 1:
            if not all(isinstance(k, Spatial) for k in kinds):
                return Dense("op")
            return Spatial(union([k.rows for k in spatial]), union([k.cols for k in spatial]),
                           "cat")
        if fn not in _ARITHMETIC:
            return Dense("op")
        for inp, kind in zip(node.all_input_nodes, kinds, strict=True):
            if kind is None and not _broadcasts_spatially(self.clean[inp.name]):
                return Dense("op")
        rows, cols = union([k.rows for k in spatial]), union([k.cols for k in spatial])
        if node.kwargs:  # alpha=..., out=...: evaluate it as written
            return Spatial(rows, cols, "value")
        # all_input_nodes drops repeats: y + y has one input node but two changed operands
        if len(spatial) == 1 and _map_operands(node, plan) == 1:
            return self._constant_arithmetic(node, spatial[0])
        linear = fn in _ADDITIVE and all(isinstance(k, Spatial) for k in kinds)
        return Spatial(rows, cols, "sum" if linear else "value")

    def _constant_arithmetic(self, node: fx.Node, src: Spatial) -> Spatial:
        """Adding a constant leaves the change as it is; multiplying scales it; subtracting
        the map from a constant negates it; dividing a constant by the map is not linear."""
        fn = node.target
        first_is_map = isinstance(node.args[0], fx.Node) and self.is_map(node.args[0])
        if fn in _ADDITIVE:
            if first_is_map or fn not in _SUBTRACT:
                return _like(src, "alias")
            kind = _like(src, "scale")
            kind.factor = -1.0
            return kind
        other = node.args[1] if first_is_map else node.args[0]
        if fn in (operator.truediv, torch.div) and not first_is_map:
            return _like(src, "value")
        kind = _like(src, "scale")
        kind.factor = ("div" if fn in (operator.truediv, torch.div) else "mul", other)
        return kind


def _like(src: Spatial, rule: str) -> Spatial:
    return Spatial(src.rows, src.cols, rule)


def _windowed(src: Spatial, kernel: Any, stride: Any, padding: Any, dilation: Any, oh: int,
              ow: int, rule: str) -> Spatial:
    k, s, p, d = pair(kernel), pair(stride), pair(padding), pair(dilation)
    rows = sliding(src.rows, k[0], s[0], p[0], d[0], oh)
    cols = sliding(src.cols, k[1], s[1], p[1], d[1], ow)
    return Spatial(rows, cols, rule, k, s, p, d)


def _transposed(w: torch.Tensor, groups: int) -> torch.Tensor:
    """Conv weight (out, in/g, kh, kw) as the flipped transposed-convolution weight
    (in, out/g, kh, kw): scattering a change through it equals convolving the change."""
    co, ci_g, kh, kw = w.shape
    wt = w.view(groups, co // groups, ci_g, kh, kw).transpose(1, 2)
    return wt.reshape(ci_g * groups, co // groups, kh, kw).flip(2, 3).contiguous()


def _exact(band: Band) -> list[tuple[int, int]]:
    """Per input position, the (start, length) of its exact window (one position if empty)."""
    empty = band.empty
    start = np.where(empty, 0, band.lo)
    length = np.where(empty, 1, band.hi - band.lo + 1)
    return [(int(s), int(n)) for s, n in zip(start, length, strict=True)]


def _gap_or_dense(m: nn.AdaptiveAvgPool2d, kinds: list[Any]) -> Dense:
    out = m.output_size
    is_gap = pair(out if out is not None else 1) == (1, 1)
    return Dense("gap" if is_gap and isinstance(kinds[0], Spatial) else "op")


def _reads(user: fx.Node, node: fx.Node) -> int:
    """How many times ``user``'s arguments name ``node``."""
    count = 0

    def visit(n: fx.Node) -> fx.Node:
        nonlocal count
        count += n is node
        return n

    fx.node.map_arg((user.args, user.kwargs), visit)
    return count


def _map_operands(node: fx.Node, plan: dict[str, Any]) -> int:
    """Operands of ``node`` that are changed maps, counting repeats (y * y has two)."""
    return sum(isinstance(a, fx.Node) and isinstance(plan.get(a.name), Spatial)
               for a in node.args)


def _cat_dim(node: fx.Node) -> int | None:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return dim if isinstance(dim, int) else None


def _broadcasts_spatially(value: Any) -> bool:
    """A constant operand is safe in a windowed op if it does not vary over H and W."""
    if not isinstance(value, torch.Tensor):
        return True
    return value.dim() < 2 or tuple(value.shape[-2:]) == (1, 1)

"""The cone engine: exact one-pixel scoring that recomputes only what a pixel can reach.

A one-pixel change alters only a cone of activations (its receptive-field footprint, layer by
layer; Krypton, Nakandala et al. 2019). The engine traces the classifier with torch.fx, runs the
clean image(s) once and caches every activation, then for each candidate computes every spatial
layer only on a small window around the pixel's cone, reading everything outside the window from
the clean cache. Global average pooling folds the window back into the clean pooled vector as a
correction, and the (tiny) head runs densely. A stride-1 convolution whose input window is much
smaller than its output window is computed from the change of its input instead (it is linear:
conv(x) = conv(clean) + conv(x - clean), one transposed-convolution GEMM over the small window).
The result equals a full forward pass up to float rounding; tests hold it to 1e-5 against the
reference engine on every zoo model.

Supported spatial layers: convolutions (any stride, padding, dilation, groups), max and average
pooling, Keras-style ``SamePad2d``, batch norm in eval mode, pointwise activations, arithmetic with
per-channel constants, residual additions and channel concatenation. Anything else is computed
densely from that layer on (still exact, just slower); a model fx cannot trace falls back to the
reference engine, and ``fallback_reason`` says why.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from medrobust.models.classifier import Classifier
from medrobust.models.engines.base import PixelEngine
from medrobust.models.engines.boxes import Band, shifted, sliding, union
from medrobust.models.engines.dense import DenseEngine
from medrobust.models.layers import SamePad2d

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid,
                      nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Hardtanh, nn.Mish,
                      nn.Softplus, nn.BatchNorm2d, nn.InstanceNorm2d)
_POINTWISE_FUNCTIONS = {F.relu, torch.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu,
                        F.leaky_relu, F.dropout}
_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
               torch.mul, torch.div}


#: Rows per call in batch-consistent mode. Cone windows are small, so large calls amortise the
#: per-layer Python overhead without spilling the caches (unlike full forward passes).
CONSISTENT_CHUNK = 512

#: A stride-1 convolution is computed from its input's change when the input window is smaller
#: than this share of the output window (the transposed-convolution GEMM then does less work).
DELTA_AREA = 0.6


class _Tracer(fx.Tracer):
    """Keeps SamePad2d whole: its padding depends on the input size, which fx cannot trace."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SamePad2d) or super().is_leaf_module(m, qualname)


@dataclass
class _Spatial:
    """Plan for a node whose activation is a (B,C,H,W) map changed only inside a cone."""

    rows: Band
    cols: Band
    rule: str  # input | window | pointwise | combine
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    fill: float = 0.0
    # Fixed window lengths and per-input-position window starts (see Band.window), filled in
    # once by the planner so evaluation only indexes them.
    length: tuple[int, int] = (1, 1)
    starts: tuple[torch.Tensor, torch.Tensor] | None = None
    # combine nodes: operands whose window is this node's own (no re-materialising needed)
    same_window: frozenset[str] = frozenset()
    # stride-1 convolutions whose input window is much smaller than their output window are
    # computed from the change of their input (see ConeEngine._delta_conv)
    delta: bool = False


@dataclass
class _Dense:
    """Plan for a node computed densely per candidate (``gap`` uses the pooling shortcut)."""

    rule: str  # gap | op


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ConeEngine(PixelEngine):
    """Exact receptive-field-cone scoring of one-pixel candidates (k = 1)."""

    name = "fast"

    def __init__(self, classifier: Classifier, images: torch.Tensor, chunk: int = 512,
                 batch_consistent: bool = False) -> None:
        """``batch_consistent``: every evaluation has the same shape (chunks of exactly
        ``CONSISTENT_CHUNK`` rows, the last one padded) and takes the same code path, so a
        candidate's score does not depend on which others share its call (attacks need this;
        maps do not)."""
        super().__init__(classifier, images)
        self.batch_consistent = batch_consistent
        self.chunk = CONSISTENT_CHUNK if batch_consistent else chunk
        self.fallback_reason: str | None = None
        self._uniform = False
        self._reference = DenseEngine(classifier, images)
        try:
            self.graph = fx.GraphModule(classifier, _Tracer().trace(classifier))
        except Exception as exc:  # any tracing failure means: use the reference engine
            self.fallback_reason = f"torch.fx cannot trace the model ({type(exc).__name__}: {exc})"
            warnings.warn(f"fast engine falls back to the reference engine: {self.fallback_reason}",
                          stacklevel=2)
            return
        self.modules = dict(self.graph.named_modules())
        self._clean_pass()
        self._plan()
        self._padded: dict[tuple[str, int, int, float], torch.Tensor] = {}
        self._weights_t: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- clean pass and planning
    @torch.inference_mode()
    def _clean_pass(self) -> None:
        """Run the clean images once, keeping every node's output."""
        env: dict[str, Any] = {}

        class Keep(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                out = super().run_node(n)
                env[n.name] = out
                return out

        Keep(self.graph).run(self.images)
        self.clean = env

    def _is_map(self, node: fx.Node) -> bool:
        v = self.clean.get(node.name)
        return isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == self.images.shape[0]

    def _plan(self) -> None:
        plan: dict[str, _Spatial | _Dense | None] = {}  # None: constant (input-independent)
        dev = self.images.device
        for node in self.graph.graph.nodes:
            kind = self._plan_node(node, plan)
            if isinstance(kind, _Spatial):
                ly, oy = kind.rows.window()
                lx, ox = kind.cols.window()
                kind.length = (ly, lx)
                kind.starts = (torch.from_numpy(oy).to(dev), torch.from_numpy(ox).to(dev))
                if kind.rule == "window" and kind.stride == (1, 1) and isinstance(
                        self.modules.get(node.target), nn.Conv2d):
                    src = plan[node.all_input_nodes[0].name]
                    kind.delta = src.length[0] * src.length[1] < DELTA_AREA * ly * lx
                if kind.rule == "combine":
                    kind.same_window = frozenset(
                        n.name for n in node.all_input_nodes
                        if isinstance(plan[n.name], _Spatial) and _same_window(plan[n.name], kind))
            plan[node.name] = kind
        self.plan = plan
        # Spatial layers the planner could not window: computed densely (exact, slower).
        self.dense_layers = [n for n, k in plan.items() if isinstance(k, _Dense)
                             and k.rule == "op" and self._is_map(self._node(n))]

    def _node(self, name: str) -> fx.Node:
        return next(n for n in self.graph.graph.nodes if n.name == name)

    def _plan_node(self, node: fx.Node, plan: dict[str, Any]) -> _Spatial | _Dense | None:
        if node.op == "placeholder":
            _, _, h, w = self.images.shape
            return _Spatial(Band.identity(h), Band.identity(w), "input")
        if node.op in ("get_attr", "output"):
            return None if node.op == "get_attr" else _Dense("op")
        inputs = node.all_input_nodes
        kinds = [plan[i.name] for i in inputs]
        if all(k is None for k in kinds):
            return None
        if any(isinstance(k, _Dense) for k in kinds) or not self._is_map(node):
            if node.op == "call_module" and isinstance(self.modules[node.target],
                                                       nn.AdaptiveAvgPool2d):
                return self._gap_or_dense(node, kinds)
            return _Dense("op")
        spatial = [k for k in kinds if isinstance(k, _Spatial)]
        if node.op == "call_module":
            return self._plan_module(node, self.modules[node.target], spatial[0], kinds)
        if node.op == "call_function":
            return self._plan_function(node, spatial, kinds)
        if node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh") \
                and len(spatial) == 1:
            return _Spatial(spatial[0].rows, spatial[0].cols, "pointwise")
        return _Dense("op")

    def _gap_or_dense(self, node: fx.Node, kinds: list[Any]) -> _Dense:
        out = self.modules[node.target].output_size
        is_gap = _pair(out if out is not None else 1) == (1, 1)
        return _Dense("gap" if is_gap and isinstance(kinds[0], _Spatial) else "op")

    def _plan_module(self, node: fx.Node, m: nn.Module, src: _Spatial, kinds: list[Any]
                     ) -> _Spatial | _Dense:
        out = self.clean[node.name]
        oh, ow = int(out.shape[2]), int(out.shape[3])
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            return self._windowed(src, m.kernel_size, m.stride, m.padding, m.dilation, 0.0, oh, ow)
        if isinstance(m, nn.MaxPool2d) and not m.ceil_mode:
            return self._windowed(src, m.kernel_size, m.stride or m.kernel_size, m.padding,
                                  m.dilation, float("-inf"), oh, ow)
        if isinstance(m, nn.AvgPool2d) and not m.ceil_mode and (
                m.count_include_pad or _pair(m.padding) == (0, 0)) and m.divisor_override is None:
            return self._windowed(src, m.kernel_size, m.stride or m.kernel_size, m.padding, 1,
                                  0.0, oh, ow)
        if isinstance(m, SamePad2d):
            inp = self.clean[node.all_input_nodes[0].name]
            left, _, top, _ = m.pads(int(inp.shape[2]), int(inp.shape[3]))
            return _Spatial(shifted(src.rows, top, oh), shifted(src.cols, left, ow), "window",
                            padding=(top, left))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self._gap_or_dense(node, kinds)
        if isinstance(m, _POINTWISE_MODULES) and not (
                isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and (m.training or isinstance(
                    m, nn.InstanceNorm2d))):
            return _Spatial(src.rows, src.cols, "pointwise")
        return _Dense("op")

    def _windowed(self, src: _Spatial, kernel: Any, stride: Any, padding: Any, dilation: Any,
                  fill: float, oh: int, ow: int) -> _Spatial:
        k, s, p, d = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
        rows = sliding(src.rows, k[0], s[0], p[0], d[0], oh)
        cols = sliding(src.cols, k[1], s[1], p[1], d[1], ow)
        return _Spatial(rows, cols, "window", k, s, p, d, fill)

    def _plan_function(self, node: fx.Node, spatial: list[_Spatial], kinds: list[Any]
                       ) -> _Spatial | _Dense:
        fn = node.target
        if fn in _POINTWISE_FUNCTIONS and len(spatial) == 1:
            return _Spatial(spatial[0].rows, spatial[0].cols, "pointwise")
        combine = fn in _ARITHMETIC or (fn is torch.cat and _cat_dim(node) == 1)
        if not combine:
            return _Dense("op")
        for inp, kind in zip(node.all_input_nodes, kinds, strict=True):
            if kind is None and not _broadcasts_spatially(self.clean[inp.name]):
                return _Dense("op")
        if len(spatial) == 1 and fn is not torch.cat:
            # arithmetic with per-channel constants (normalisation, scaling) is pointwise
            return _Spatial(spatial[0].rows, spatial[0].cols, "pointwise")
        return _Spatial(union([k.rows for k in spatial]), union([k.cols for k in spatial]),
                        "combine")

    # ---------------------------------------------------------------- candidate evaluation
    def probabilities(self, image_index: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
                      colours: torch.Tensor) -> torch.Tensor:
        if self.fallback_reason is not None or xs.shape[1] != 1:
            return self._reference.probabilities(image_index, xs, ys, colours)
        out = []
        for s in range(0, image_index.shape[0], self.chunk):
            part = [image_index[s:s + self.chunk], xs[s:s + self.chunk, 0],
                    ys[s:s + self.chunk, 0], colours[s:s + self.chunk, 0]]
            n = part[0].shape[0]
            if self.batch_consistent and n < self.chunk:
                part = [torch.cat([t, t[-1:].expand(self.chunk - n, *t.shape[1:])]) for t in part]
            out.append(self._probabilities(*part)[:n])
        if not out:
            return torch.empty(0, self.classifier.num_classes, device=self.images.device)
        return torch.cat(out)

    @torch.inference_mode()
    def _probabilities(self, img: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       colour: torch.Tensor) -> torch.Tensor:
        self._uniform = not self.batch_consistent and bool(
            (img == img[0]).all() and (x == x[0]).all() and (y == y[0]).all())
        env: dict[str, Any] = {}
        for node in self.graph.graph.nodes:
            kind = self.plan[node.name]
            if node.op == "output":
                logits = self._dense_value(node.args[0], env, img)
                return self.classifier.logits_to_probabilities(logits)
            if kind is None:
                env[node.name] = ("const", self.clean[node.name])
            elif isinstance(kind, _Spatial):
                assert kind.starts is not None
                ly, lx = kind.length
                # same-pixel chunks: one origin serves every row (saves per-row index math)
                origin = ((kind.starts[0][y[:1]], kind.starts[1][x[:1]]) if self._uniform
                          else (kind.starts[0][y], kind.starts[1][x]))
                if kind.rule == "input":
                    env[node.name] = ("map", colour[:, :, None, None], origin)
                else:
                    env[node.name] = ("map", self._spatial(node, kind, env, img, origin, ly, lx),
                                      origin)
            else:
                env[node.name] = ("dense", self._dense(node, kind, env, img))
        raise RuntimeError("graph has no output node")

    def _spatial(self, node: fx.Node, kind: _Spatial, env: dict[str, Any], img: torch.Tensor,
                 origin: tuple[torch.Tensor, torch.Tensor], ly: int, lx: int) -> torch.Tensor:
        if kind.rule == "pointwise":
            src = node.all_input_nodes[0]
            _, win, _ = env[src.name]
            args = fx.node.map_arg(node.args, lambda n: win if n is src else env[n.name][1])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name][1])
            return self._call(node, args, kwargs)
        if kind.rule == "window" and kind.delta:
            return self._delta_conv(node, kind, env, img, origin, ly, lx)
        if kind.rule == "window":
            src = node.all_input_nodes[0]
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (kind.kernel, kind.stride, kind.padding,
                                                      kind.dilation)
            start = (origin[0] * sh - ph, origin[1] * sw - pw)
            size = ((ly - 1) * sh + (kh - 1) * dh + 1, (lx - 1) * sw + (kw - 1) * dw + 1)
            margin = max(ph, pw) + max(kh, kw) * max(dh, dw) + 1
            win = self._materialise(src, env, img, start, size, margin, kind.fill)
            m = self.modules[node.target]
            if isinstance(m, nn.Conv2d):
                return F.conv2d(win, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
            if isinstance(m, nn.MaxPool2d):
                return F.max_pool2d(win, m.kernel_size, m.stride or m.kernel_size, 0, m.dilation)
            if isinstance(m, nn.AvgPool2d):
                return F.avg_pool2d(win, m.kernel_size, m.stride or m.kernel_size, 0)
            return win  # SamePad2d: the window already holds the zero padding
        # combine: bring every map operand onto this node's window, then apply.
        windows = {n.name: (env[n.name][1] if n.name in kind.same_window else
                            self._materialise(n, env, img, origin, (ly, lx), 0, 0.0))
                   for n in node.all_input_nodes if env[n.name][0] == "map"}
        args = fx.node.map_arg(node.args, lambda n: windows.get(n.name, env[n.name][1]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name][1])
        return self._call(node, args, kwargs)

    def _materialise(self, node: fx.Node, env: dict[str, Any], img: torch.Tensor,
                     start: tuple[torch.Tensor, torch.Tensor], size: tuple[int, int],
                     margin: int, fill: float) -> torch.Tensor:
        """(M,C,size) windows of ``node`` at ``start``: clean values with the cone pasted in.

        Positions outside the map read ``fill`` (the consumer's padding value).
        """
        _, win, origin = env[node.name]
        return self._compose(node.name, win, origin, img, start, size, margin, fill, add=False)

    def _compose(self, name: str, win: torch.Tensor, origin: tuple[torch.Tensor, torch.Tensor],
                 img: torch.Tensor, start: tuple[torch.Tensor, torch.Tensor],
                 size: tuple[int, int], margin: int, fill: float, add: bool) -> torch.Tensor:
        """Clean windows of ``name`` at ``start`` with ``win`` (placed at ``origin``) pasted in,
        or added to them when ``add`` (a change computed elsewhere). Parts of ``win`` outside
        the window are dropped.

        When every candidate of the chunk sits at the same pixel of the same image (confidence
        maps), the clean part is one slice shared by all and the paste is a slice assignment.
        """
        oy, ox = origin
        if self._uniform:
            return self._compose_uniform(name, win, int(img[0]), (int(oy[0]), int(ox[0])),
                                         (int(start[0][0]), int(start[1][0])), size, margin,
                                         fill, add)
        base = self._padded_clean(name, margin, fill)
        dev = base.device
        m, c = win.shape[:2]
        rows = (start[0] + margin)[:, None] + torch.arange(size[0], device=dev)
        cols = (start[1] + margin)[:, None] + torch.arange(size[1], device=dev)
        # One buffer with a spare slot at the end: cone values that fall outside the window are
        # scattered there and dropped, which keeps the paste a single vectorised scatter.
        out = base.new_empty(m, c, size[0] * size[1] + 1)
        out[:, :, :-1].view(m, c, size[0], size[1]).copy_(
            base[img[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2))
        wy, wx = win.shape[2], win.shape[3]
        r = (oy - start[0])[:, None] + torch.arange(wy, device=dev)
        q = (ox - start[1])[:, None] + torch.arange(wx, device=dev)
        valid = ((r >= 0) & (r < size[0]))[:, :, None] & ((q >= 0) & (q < size[1]))[:, None, :]
        flat = torch.where(valid, r[:, :, None] * size[1] + q[:, None, :], size[0] * size[1])
        index = flat.reshape(m, 1, -1).expand(m, c, -1)
        if add:
            out.scatter_add_(2, index, win.reshape(m, c, -1))
        else:
            out.scatter_(2, index, win.reshape(m, c, -1))
        return out[:, :, :-1].view(m, c, size[0], size[1])

    def _compose_uniform(self, name: str, win: torch.Tensor, img: int, origin: tuple[int, int],
                         start: tuple[int, int], size: tuple[int, int], margin: int,
                         fill: float, add: bool) -> torch.Tensor:
        base = self._padded_clean(name, margin, fill)
        r0, c0 = start[0] + margin, start[1] + margin
        clean = base[img:img + 1, :, r0:r0 + size[0], c0:c0 + size[1]]
        out = clean.expand(win.shape[0], -1, -1, -1).clone()
        # paste (or add) the cone window where it overlaps this window
        y0, x0 = origin[0] - start[0], origin[1] - start[1]
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + win.shape[2], size[0]), min(x0 + win.shape[3], size[1])
        if ya < yb and xa < xb:
            part = win[:, :, ya - y0:yb - y0, xa - x0:xb - x0]
            if add:
                out[:, :, ya:yb, xa:xb] += part
            else:
                out[:, :, ya:yb, xa:xb] = part
        return out

    def _delta_conv(self, node: fx.Node, kind: _Spatial, env: dict[str, Any], img: torch.Tensor,
                    origin: tuple[torch.Tensor, torch.Tensor], ly: int, lx: int) -> torch.Tensor:
        """A stride-1 convolution from the change of its input: conv(x) = conv(clean) +
        conv(x - clean), and x - clean is zero outside the input's small window, so one
        transposed-convolution GEMM over that window gives the whole change (the direct way
        convolves the larger output window). Exact up to float rounding (~1e-7)."""
        src = node.all_input_nodes[0]
        _, win, src_origin = env[src.name]
        delta = win - self._clean_window(src.name, img, src_origin, win.shape[2:])
        m = self.modules[node.target]
        (kh, kw), (ph, pw), (dh, dw) = kind.kernel, kind.padding, kind.dilation
        change = F.conv_transpose2d(delta, self._transposed_weight(node.name, m), None, 1, 0, 0,
                                    m.groups, m.dilation)
        at = (src_origin[0] + ph - (kh - 1) * dh, src_origin[1] + pw - (kw - 1) * dw)
        return self._compose(node.name, change, at, img, origin, (ly, lx), 0, 0.0, add=True)

    def _transposed_weight(self, name: str, m: nn.Conv2d) -> torch.Tensor:
        """Conv weight (out, in/g, kh, kw) as the flipped transposed-conv weight (in, out/g, ...)."""
        if name not in self._weights_t:
            w = m.weight.detach()
            g = m.groups
            co, ci_g, kh, kw = w.shape
            wt = w.view(g, co // g, ci_g, kh, kw).transpose(1, 2).reshape(ci_g * g, co // g, kh, kw)
            self._weights_t[name] = wt.flip(2, 3).contiguous()
        return self._weights_t[name]

    def _clean_window(self, name: str, img: torch.Tensor,
                      origin: tuple[torch.Tensor, torch.Tensor], size: Any) -> torch.Tensor:
        """The clean values under a cone window (a broadcast view on the uniform path)."""
        if self._uniform:
            base = self.clean[name]
            i, r, c = int(img[0]), int(origin[0][0]), int(origin[1][0])
            return base[i:i + 1, :, r:r + int(size[0]), c:c + int(size[1])]
        return self._materialise_clean(name, img, origin, size)

    def _padded_clean(self, name: str, margin: int, fill: float) -> torch.Tensor:
        key = (name, margin, margin, fill)
        if key not in self._padded:
            clean = self.clean[name]
            self._padded[key] = F.pad(clean, (margin,) * 4, value=fill) if margin else clean
        return self._padded[key]

    def _dense(self, node: fx.Node, kind: _Dense, env: dict[str, Any], img: torch.Tensor) -> Any:
        if kind.rule == "gap":
            src = node.all_input_nodes[0]
            _, win, origin = env[src.name]
            clean_win = self._clean_window(src.name, img, origin, win.shape[2:])
            h, w = self.clean[src.name].shape[2:]
            delta = (win - clean_win).sum(dim=(2, 3), keepdim=True) / (h * w)
            return self.clean[node.name][img] + delta
        args = fx.node.map_arg(node.args, lambda n: self._dense_value(n, env, img))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self._dense_value(n, env, img))
        return self._call(node, args, kwargs)

    def _materialise_clean(self, name: str, img: torch.Tensor,
                           origin: tuple[torch.Tensor, torch.Tensor], size: Any) -> torch.Tensor:
        base = self.clean[name]
        rows = origin[0][:, None] + torch.arange(int(size[0]), device=base.device)
        cols = origin[1][:, None] + torch.arange(int(size[1]), device=base.device)
        return base[img[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _dense_value(self, arg: Any, env: dict[str, Any], img: torch.Tensor) -> Any:
        """A node's value for dense computation (maps are expanded to full size: slow path)."""
        if not isinstance(arg, fx.Node):
            return arg
        tag, value = env[arg.name][0], env[arg.name][1]
        if tag == "map":
            clean = self.clean[arg.name]
            _, _, h, w = clean.shape
            zero = torch.zeros_like(env[arg.name][2][0])
            return self._materialise(arg, env, img, (zero, zero), (h, w), 0, 0.0)
        return value

    def _call(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)
        raise RuntimeError(f"cannot evaluate node {node.format_node()}")


def _same_window(a: _Spatial, b: _Spatial) -> bool:
    assert a.starts is not None and b.starts is not None
    return a.length == b.length and all(torch.equal(u, v) for u, v in zip(a.starts, b.starts,
                                                                           strict=True))


def _cat_dim(node: fx.Node) -> int | None:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return dim if isinstance(dim, int) else None


def _broadcasts_spatially(value: Any) -> bool:
    """A constant operand is safe in a windowed op if it does not vary over H and W."""
    if not isinstance(value, torch.Tensor):
        return True
    return value.dim() < 2 or tuple(value.shape[-2:]) == (1, 1)

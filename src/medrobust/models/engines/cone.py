"""The cone engine: exact one-pixel scoring that computes only what a pixel can change.

A one-pixel change alters only a cone of activations (its receptive-field footprint, layer by
layer; Krypton, Nakandala et al. 2019). The engine traces the classifier with torch.fx, runs the
clean image(s) once and caches every activation, then carries each candidate's *change* through
the network on small windows around its cone. Linear layers act on the change alone (a
convolution of the change needs no clean values at all, and batch norm after a convolution is
folded into its weights); nonlinear ones rebuild clean + change on the window and subtract the
clean output. Global average pooling adds the window's summed change to the clean pooled vector,
and the (tiny) head runs densely. ``cone_plan`` says what each layer does.

The result equals a full forward pass up to float rounding; tests hold it to 1e-5 against the
reference engine on every zoo model. Supported spatial layers: convolutions (any stride, padding,
dilation, groups), max and average pooling, Keras-style ``SamePad2d``, batch norm in eval mode,
pointwise activations, arithmetic with per-channel constants, residual additions and channel
concatenation. Anything else is computed densely from that layer on (still exact, slower); a
model fx cannot trace falls back to the reference engine, and ``fallback_reason`` says why.
"""

from __future__ import annotations

import itertools
import operator
import warnings
import weakref
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F

from medrobust.models.classifier import Classifier
from medrobust.models.engines.base import PixelEngine, full_float32
from medrobust.models.engines.cone_plan import ConePlanner, ConeTracer, Dense, Spatial
from medrobust.models.engines.dense import DenseEngine
from medrobust.models.engines.toeplitz import conv_matrix
from medrobust.models.engines.windows import (
    Chunk,
    Origin,
    add_into,
    engine_layout,
    gather,
    layout,
    place,
)

#: Rows per call in batch-consistent mode: large enough to amortise the per-layer overhead,
#: small enough that a layer's windows stay in cache (256 beat 128, 512 and 1024 on a 2-core
#: CPU: 1.5x to 1.7x the attack rate of 512 on PneumoniaMNIST and BCCD).
CONSISTENT_CHUNK = 256

#: On a GPU a call's rows are sized so that its largest window tensor holds about this many
#: floats (4 GiB), within GPU_ROWS: a paper-grid pixel (140,608 colours) is one call for the
#: zoo's 64x64 models. A GPU needs that many: at 256 rows a map of one 64x64 pixel made 550
#: calls and 39,000 kernel launches, and the H100 idled between them (SmallCNN: 108k scores/s
#: at 256 rows, 1.16M at 16,384, 2.4M at one call per pixel; benchmarks/gpu_engine.py).
#: A call that runs out of GPU memory is retried with half the rows.
GPU_WINDOW_VALUES = 2**30
GPU_ROWS = (256, 2**18)


#: Convolutions whose input change holds at most this many values per candidate (channels x
#: window positions) run as one matrix product in same-pixel calls: the first layers of a cone,
#: where a convolution call's fixed cost outweighs its arithmetic (16 channels on 2x2: 27 us
#: against 172 us for 216 candidates; on 4x4: 192 against 250; 32 channels on 4x4 already
#: favours the convolution).
MATRIX_INPUTS = 256

#: A plan scores this many random candidates with both engines before its first use on each
#: call path; any disagreement above ``SELF_CHECK_TOLERANCE`` (in probability) sends the whole
#: engine to the reference. Costs one engine call and one dense batch per plan and path.
SELF_CHECK_CANDIDATES = 32
SELF_CHECK_TOLERANCE = 1e-5

#: Traced graph and plan per classifier. Building them takes about 20 ms, which a map of a few
#: pixels, or an attack on a small batch, would otherwise pay for every image. An entry is
#: reused only while the input shape, the train/eval flags and the *content* of every parameter
#: and buffer are unchanged: the plan holds folded copies of the weights, and tensor versions
#: or ids miss in-place updates through ``.data`` (EMA, weight noise) and recycled objects.
_COMPILED: weakref.WeakKeyDictionary[Classifier, tuple] = weakref.WeakKeyDictionary()


def _state(classifier: Classifier) -> tuple[list[torch.Tensor], tuple[bool, ...]]:
    tensors = [t.detach() for t in itertools.chain(classifier.parameters(), classifier.buffers())]
    return tensors, tuple(m.training for m in classifier.modules())


def _same_state(snapshot: tuple[list[torch.Tensor], tuple[bool, ...]], classifier: Classifier
                ) -> bool:
    """True when every weight and buffer holds exactly the values it held at planning time
    (a memcmp-speed comparison: about 5 ms for densenet121's 7M weights)."""
    saved, flags = snapshot
    now, now_flags = _state(classifier)
    return flags == now_flags and len(saved) == len(now) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        for a, b in zip(saved, now, strict=True))


def _lookup(classifier: Classifier, key: tuple) -> tuple | None:
    entry = _COMPILED.get(classifier)
    if entry is None or entry[0] != key or not _same_state(entry[1], classifier):
        return None
    return entry[2]


def _remember(classifier: Classifier, key: tuple, compiled: tuple) -> None:
    tensors, flags = _state(classifier)
    _COMPILED[classifier] = (key, ([t.clone() for t in tensors], flags), compiled)


class _Keep(fx.Interpreter):
    """Runs a traced graph and keeps every node's output. Operands are copied first, so an
    in-place layer (ReLU(inplace=True)) cannot overwrite the activation it reads."""

    def __init__(self, graph: fx.GraphModule) -> None:
        super().__init__(graph)
        self.values: dict[str, Any] = {}

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[Any, Any]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        copy = fx.node.map_aggregate(
            (args, kwargs), lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
        return copy[0], copy[1]

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


class _CannotTrace(Exception):
    """torch.fx could not trace the classifier."""


class _Change(NamedTuple):
    """A spatial node's change from clean, on its window (zero outside it)."""

    delta: torch.Tensor  # (M, C, h, w)
    origin: Origin


class ConeEngine(PixelEngine):
    """Exact receptive-field-cone scoring of one-pixel candidates (k = 1)."""

    name = "fast"

    def __init__(self, classifier: Classifier, images: torch.Tensor, chunk: int | None = None,
                 batch_consistent: bool = False) -> None:
        """``batch_consistent``: every evaluation has the same shape (chunks of exactly
        ``CONSISTENT_CHUNK`` rows, the last one padded) and takes the same code path, so a
        candidate's score does not depend on which others share its call (attacks need this;
        maps do not). ``chunk``: rows per call otherwise (default: 256 on a CPU, where a
        layer's windows then stay in cache; on a GPU as many as ``GPU_WINDOW_VALUES`` allows).

        Whatever goes wrong while tracing, planning, self-checking or scoring, the engine falls
        back to the reference engine, warns once in one line and says why in
        ``fallback_reason``; ``used`` names the engine that actually scored."""
        super().__init__(classifier, images)
        self.batch_consistent = batch_consistent
        self.chunk = CONSISTENT_CHUNK if batch_consistent else (chunk or 256)
        self.fallback_reason: str | None = None
        self.dense_layers: list[str] = []
        self._reference = DenseEngine(classifier, images)
        self._padded: dict[tuple[str, int, float], torch.Tensor] = {}
        self._matrices: dict[tuple, torch.Tensor] = {}
        try:
            self._build()
        except _CannotTrace as exc:
            self._fall_back(f"torch.fx cannot trace the model ({exc})")
            return
        except Exception as exc:  # a planner gap must cost speed, never correctness
            self._fall_back(f"cannot plan the model ({type(exc).__name__}: {exc})")
            return
        # Each call path a plan serves is checked once, when this engine first uses it with that
        # plan: a map of a few pixels would otherwise pay a dense batch per build (measured 2x
        # slower on the 48-pixel benchmark map). The verdict lives with the cached plan.
        for path in ("mixed",) if batch_consistent else ("mixed", "same-pixel"):
            if path not in self._verdicts:
                self._verdicts[path] = self._self_check(path)
            if self._verdicts[path] is not None:
                self._fall_back(self._verdicts[path])
                return
        if chunk is None and not batch_consistent and images.device.type != "cpu":
            self.chunk = self._gpu_rows()

    @property
    def rows_per_call(self) -> int:
        return self._reference.rows_per_call if self.fallback_reason is not None else self.chunk

    def _gpu_rows(self) -> int:
        """Rows per GPU call: the largest per-row tensor of a call (a cone window, or a whole
        map where a layer runs densely) times the rows stays near ``GPU_WINDOW_VALUES``."""
        largest = 1
        for node in self.graph.graph.nodes:
            kind, clean = self.plan[node.name], self.clean.get(node.name)
            if not isinstance(clean, torch.Tensor) or clean.dim() != 4:
                continue
            if isinstance(kind, Spatial):
                rows = max(n for _, n in kind.exact[0])
                cols = max(n for _, n in kind.exact[1])
                largest = max(largest, int(clean.shape[1]) * rows * cols)
            elif isinstance(kind, Dense):
                largest = max(largest, int(clean[0].numel()))
        lo, hi = GPU_ROWS
        return int(min(max(GPU_WINDOW_VALUES // largest, lo), hi))

    @property
    def used(self) -> str:
        """The engine that scores candidates: ``fast`` or ``reference`` (after a fallback)."""
        return "reference" if self.fallback_reason is not None else "fast"

    def describe(self) -> str:
        """One line for the store: the engine that ran, and where it was not fully windowed."""
        if self.fallback_reason is not None:
            return f"reference (fast engine fell back: {self.fallback_reason})"
        if self.dense_layers:
            return f"fast (dense from {self.dense_layers[0]} on)"
        return "fast"

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        warnings.warn(f"fast engine falls back to the reference engine: {reason}", stacklevel=3)

    def _build(self) -> None:
        key = (tuple(self.images.shape), str(self.images.device))
        cached = _lookup(self.classifier, key)
        if cached is not None:
            self.graph, self.plan, self.dense_layers, self.margin, self._verdicts = cached
            self.modules = dict(self.graph.named_modules())
            self._clean_pass()
            return
        try:
            self.graph = fx.GraphModule(self.classifier, ConeTracer().trace(self.classifier))
        except Exception as exc:  # any tracing failure means: use the reference engine
            raise _CannotTrace(f"{type(exc).__name__}: {exc}") from exc
        self.modules = dict(self.graph.named_modules())
        self._clean_pass()
        planner = ConePlanner(self.graph, self.clean, self.images)
        self.plan = planner.plan()
        self.margin = planner.margin
        # Spatial layers the planner could not window: computed densely (exact, slower).
        self.dense_layers = [n.name for n in self.graph.graph.nodes
                             if isinstance(self.plan[n.name], Dense)
                             and self.plan[n.name].rule == "op" and planner.is_map(n)]
        self._verdicts: dict[str, str | None] = {}  # call path -> self-check failure (or None)
        _remember(self.classifier, key, (self.graph, self.plan, self.dense_layers, self.margin,
                                         self._verdicts))

    @torch.inference_mode()
    def _clean_pass(self) -> None:
        """The clean activations, in float32 on a GPU too (see ``full_float32``)."""
        with full_float32(self.images.device):
            self._clean_activations()

    def _clean_activations(self) -> None:
        """Run the clean images once, keeping every node's output, one image at a time.

        Convolution kernels are chosen by shape (on a CPU a batch of one may take PyTorch's
        native kernel and a larger batch oneDNN's), and they round differently. Running each
        image alone makes its cached activations, and so every score computed from them, the
        same whichever batch it came in, on any CPU: an image attacked alone, in a batch or after
        a resume gets bit-identical results."""
        b = self.images.shape[0]
        runs = []
        for i in range(b):
            keep = _Keep(self.graph)
            keep.run(self.images[i:i + 1])
            runs.append(keep.values)
        env: dict[str, Any] = {}
        reads_input: set[str] = set()  # nodes whose value depends on the images (topological)
        for node in self.graph.graph.nodes:
            if node.op == "placeholder" or any(n.name in reads_input
                                               for n in node.all_input_nodes):
                reads_input.add(node.name)
            parts = [r[node.name] for r in runs if node.name in r]
            if not parts:
                continue
            if b > 1 and node.name in reads_input and isinstance(parts[0], torch.Tensor):
                if parts[0].dim() == 0 or parts[0].shape[0] != 1:
                    raise ValueError(f"node {node.name} does not keep the batch dimension")
                env[node.name] = torch.cat(parts)
            else:
                env[node.name] = parts[0]
        # maps in the engine's layout (channels-last on a CPU), like every change (windows.py)
        self.clean = {k: engine_layout(v) if isinstance(v, torch.Tensor) else v
                      for k, v in env.items()}

    def _self_check(self, path: str) -> str | None:
        """Score random candidates (corners included) on one call path (``mixed`` pixels, or
        one pixel's ``same-pixel`` colours) with both engines; returns why the fast engine must
        not be trusted, or None. Seeded on its own generator: no global random state is touched."""
        b, c, h, w = self.images.shape
        gen = torch.Generator().manual_seed(0)
        n = SELF_CHECK_CANDIDATES
        img = torch.randint(b, (n,), generator=gen)
        xs = torch.randint(w, (n, 1), generator=gen)
        ys = torch.randint(h, (n, 1), generator=gen)
        corners = torch.tensor([[0, 0], [w - 1, h - 1], [w - 1, 0], [0, h - 1]])
        xs[:4, 0], ys[:4, 0] = corners[:, 0], corners[:, 1]
        colours = torch.rand(n, 1, c, generator=gen)
        if path == "same-pixel":
            m = n // 4
            img, xs, ys, colours = (img[:1].expand(m), xs[4:5].expand(m, 1),
                                    ys[4:5].expand(m, 1), colours[:m])
        args = tuple(t.to(self.images.device) for t in (img, xs, ys, colours))
        try:
            fast = self._fast(*args)
        except Exception as exc:
            return f"scoring failed in the self-check ({type(exc).__name__}: {exc})"
        ref = self._reference.probabilities(*args)
        gap = float((fast - ref).abs().max()) if fast.numel() else 0.0
        if not gap <= SELF_CHECK_TOLERANCE:  # also catches NaN
            return (f"self-check: fast and reference scores differ by {gap:.2e} "
                    f"(tolerance {SELF_CHECK_TOLERANCE:.0e})")
        return None

    # ---------------------------------------------------------------- candidate evaluation
    def probabilities(self, image_index: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
                      colours: torch.Tensor) -> torch.Tensor:
        if self.fallback_reason is not None or xs.shape[1] != 1:
            return self._reference.probabilities(image_index, xs, ys, colours)
        try:
            return self._fast(image_index, xs, ys, colours)
        except Exception as exc:  # never a wrong or missing score: the reference from now on
            self._fall_back(f"scoring failed ({type(exc).__name__}: {exc})")
            return self._reference.probabilities(image_index, xs, ys, colours)

    def _fast(self, image_index: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
              colours: torch.Tensor) -> torch.Tensor:
        out = []
        s, total = 0, image_index.shape[0]
        with full_float32(self.images.device):
            while s < total:
                rows = self.chunk
                part = [image_index[s:s + rows], xs[s:s + rows, 0], ys[s:s + rows, 0],
                        colours[s:s + rows, 0]]
                n = part[0].shape[0]
                if self.batch_consistent and n < rows:
                    part = [torch.cat([t, t[-1:].expand(rows - n, *t.shape[1:])]) for t in part]
                try:
                    probs = self._probabilities(*part)
                except torch.cuda.OutOfMemoryError:
                    if self.batch_consistent or rows <= GPU_ROWS[0]:
                        raise
                    self.chunk = rows // 2  # fewer rows per call from now on; same scores
                    continue
                out.append(probs[:n])
                s += rows
        if not out:
            return torch.empty(0, self.classifier.num_classes, device=self.images.device)
        return torch.cat(out)

    @torch.inference_mode()
    def _probabilities(self, img: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       colour: torch.Tensor) -> torch.Tensor:
        # Same-pixel chunks (confidence maps) use each layer's exact window and slicing.
        uniform = not self.batch_consistent and bool(
            (img == img[0]).all() and (x == x[0]).all() and (y == y[0]).all())
        ck = Chunk(img, y, x, uniform)
        y0, x0 = (int(y[0]), int(x[0])) if uniform else (0, 0)
        env: dict[str, Any] = {}
        for node in self.graph.graph.nodes:
            kind = self.plan[node.name]
            if node.op == "output":
                logits = self._value(node.args[0], env, ck)
                return self.classifier.logits_to_probabilities(logits)
            if kind is None:
                env[node.name] = self.clean[node.name]
            elif isinstance(kind, Spatial) and kind.rule == "alias":
                env[node.name] = env[node.all_input_nodes[0].name]
            elif isinstance(kind, Spatial):
                assert kind.starts is not None
                origin, size = (kind.window(y0, x0) if uniform else
                                ((kind.starts[0][y], kind.starts[1][x]), kind.length))
                if kind.rule == "input":
                    pixel = self.images[img, :, y, x] if not uniform else \
                        self.images[ck.image, :, y0, x0][None]
                    env[node.name] = _Change((colour - pixel)[:, :, None, None], origin)
                else:
                    delta = self._change(node, kind, env, ck, origin, size)
                    if not uniform and kind.masked:
                        delta = self._mask(node, delta, origin)
                    env[node.name] = _Change(delta, origin)
            else:
                env[node.name] = self._dense(node, kind, env, ck)
        raise RuntimeError("graph has no output node")

    def _change(self, node: fx.Node, kind: Spatial, env: dict[str, Any], ck: Chunk,
                origin: Origin, size: tuple[int, int]) -> torch.Tensor:
        """This node's change on its window (origin, size)."""
        rule = kind.rule
        src = node.all_input_nodes[0]
        if rule in ("shift", "scale", "relu", "conv", "avgpool", "pool"):
            delta, at = env[src.name]
        if rule == "shift":
            return place(delta, (at[0] + kind.offset[0], at[1] + kind.offset[1]), origin, size,
                         ck)
        if rule == "scale":
            return self._scale(delta, kind.factor, env)
        if rule == "relu":  # relu(pre + change) - relu(pre): one clean window, not two
            # mixed windows may leave the map: padding the clean input with -inf makes the
            # change there exactly zero (relu(-inf + d) - relu(-inf)), whatever d was
            pre = self._clean(src.name, origin, size, ck, fill=float("-inf"))
            v = delta.add_(pre) if self._may_update(src, delta) else delta + pre
            return v.relu_().sub_(pre.relu())  # (pre may be a view of the clean cache)
        if rule == "conv":
            return self._conv(node, kind, delta, at, origin, size, ck)
        if rule in ("avgpool", "pool"):
            return self._pool(node, kind, delta, at, origin, size, ck)
        if rule == "sum":
            return self._sum(node, env, ck, origin, size)
        if rule == "cat":
            parts = {n.name: place(env[n.name].delta, env[n.name].origin, origin, size, ck)
                     for n in node.all_input_nodes}
            args = fx.node.map_arg(node.args, lambda n: parts[n.name])
            return self._call(node, args, dict(node.kwargs))  # cat's dim=1
        # value: rebuild clean + change for every changed operand, apply, subtract clean
        values = {n.name: (self._clean(n.name, origin, size, ck)
                           + place(env[n.name].delta, env[n.name].origin, origin, size, ck))
                  for n in node.all_input_nodes if isinstance(env[n.name], _Change)}
        args = fx.node.map_arg(node.args, lambda n: values.get(n.name, env[n.name]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values.get(n.name, env[n.name]))
        out = self._call(node, args, kwargs)
        return out - self._clean(node.name, origin, size, ck)

    def _sum(self, node: fx.Node, env: dict[str, Any], ck: Chunk, origin: Origin,
             size: tuple[int, int]) -> torch.Tensor:
        """Residual additions (and differences): the first operand on the window, the others
        added into it where they reach."""
        first, *rest = node.args
        signs = [1.0] + [-1.0 if node.target in (operator.sub, torch.sub) else 1.0] * len(rest)
        head = env[first.name]
        out = place(head.delta, head.origin, origin, size, ck)
        shares = out.untyped_storage().data_ptr() == head.delta.untyped_storage().data_ptr()
        if shares and not (out is head.delta and self._may_update(first, out)):
            out = out.clone()  # do not add into a change another node still reads
        for arg, sign in zip(rest, signs[1:], strict=True):
            add_into(out, env[arg.name].delta, env[arg.name].origin, origin, ck, sign)
        return out

    def _may_update(self, node: fx.Node, delta: torch.Tensor) -> bool:
        """True when ``node``'s change is this consumer's alone to overwrite (and contiguous,
        where in-place arithmetic is fast)."""
        kind = self.plan[node.name]
        return isinstance(kind, Spatial) and kind.mutable and delta.is_contiguous(
            memory_format=layout(delta.device))

    @staticmethod
    def _scale(delta: torch.Tensor, factor: Any, env: dict[str, Any]) -> torch.Tensor:
        if isinstance(factor, tuple):  # ("mul" | "div", constant operand)
            how, other = factor
            other = env[other.name] if isinstance(other, fx.Node) else other
            return delta / other if how == "div" else delta * other
        return delta * factor

    def _conv(self, node: fx.Node, kind: Spatial, delta: torch.Tensor, at: Origin,
              origin: Origin, size: tuple[int, int], ck: Chunk) -> torch.Tensor:
        """conv(clean + change) - conv(clean) = conv(change): no clean values, no bias."""
        (kh, kw), (ph, pw), (dh, dw) = kind.kernel, kind.padding, kind.dilation
        if ck.uniform and kind.groups == 1 and delta[0].numel() <= MATRIX_INPUTS:
            return self._matrix_conv(node, kind, delta, at, origin, size)
        if kind.transposed:  # scatter the input's change through the kernel
            out = F.conv_transpose2d(delta, kind.weight_t, None, 1, 0, 0, kind.groups,
                                     kind.dilation)
            corner = (at[0] + ph - (kh - 1) * dh, at[1] + pw - (kw - 1) * dw)
            return place(out, corner, origin, size, ck)
        start, extent = _reads(kind, origin, size)
        pads = _even_padding(delta, at, start, extent) if ck.uniform else None
        if pads is not None:  # the convolution pads the change itself: no zeroed copy
            return F.conv2d(delta, kind.weight, None, kind.stride, pads, kind.dilation,
                            kind.groups)
        return F.conv2d(place(delta, at, start, extent, ck), kind.weight, None, kind.stride, 0,
                        kind.dilation, kind.groups)

    def _matrix_conv(self, node: fx.Node, kind: Spatial, delta: torch.Tensor, at: Origin,
                     origin: Origin, size: tuple[int, int]) -> torch.Tensor:
        """A convolution whose input change spans a few positions, as one matrix product
        (see toeplitz.py); the matrix is cached per window placement."""
        assert kind.weight is not None
        offset = (int(at[0]) - int(origin[0]) * kind.stride[0],
                  int(at[1]) - int(origin[1]) * kind.stride[1])
        in_size = (int(delta.shape[2]), int(delta.shape[3]))
        key = (node.name, offset, in_size, tuple(size))
        matrix = self._matrices.get(key)
        if matrix is None:
            matrix = conv_matrix(kind.weight, kind.stride, kind.padding, kind.dilation, offset,
                                 in_size, size)
            self._matrices[key] = matrix
        m = delta.shape[0]
        flat = delta.permute(0, 2, 3, 1).reshape(m, -1)  # a view of a channels-last change
        out = flat @ matrix
        return engine_layout(out.view(m, size[0], size[1], -1).permute(0, 3, 1, 2))

    def _pool(self, node: fx.Node, kind: Spatial, delta: torch.Tensor, at: Origin,
              origin: Origin, size: tuple[int, int], ck: Chunk) -> torch.Tensor:
        start, extent = _reads(kind, origin, size)
        span = place(delta, at, start, extent, ck)  # the input change on every position read
        if kind.rule == "avgpool":  # linear: pool the change (padding counts as zeros)
            return F.avg_pool2d(span, kind.kernel, kind.stride, 0)
        src = node.all_input_nodes[0].name
        values = self._clean(src, start, extent, ck, kind.fill, kind.margin) + span
        pooled = F.max_pool2d(values, kind.kernel, kind.stride, 0, kind.dilation)
        return pooled - self._clean(node.name, origin, size, ck)

    def _clean(self, name: str, origin: Origin, size: tuple[int, int], ck: Chunk,
               fill: float = 0.0, margin: int = 0) -> torch.Tensor:
        """Clean values of ``name`` on a window. Positions outside the map read ``fill`` (the
        padding of the layer that reads them). Uniform windows stay inside the map except pool
        spans (``margin``); mixed windows may reach ``self.margin`` outside it."""
        if not ck.uniform:
            margin = self.margin
        base = self._padded_clean(name, margin, fill) if margin else self.clean[name]
        return gather(base, origin, size, ck, margin)

    def _mask(self, node: fx.Node, delta: torch.Tensor, origin: Origin) -> torch.Tensor:
        """Zero the parts of a mixed call's window that lie outside the map."""
        h, w = self.clean[node.name].shape[2:]
        dev = delta.device
        r = origin[0][:, None] + torch.arange(delta.shape[2], device=dev)
        c = origin[1][:, None] + torch.arange(delta.shape[3], device=dev)
        inside = ((r >= 0) & (r < h))[:, :, None] & ((c >= 0) & (c < w))[:, None, :]
        return delta.masked_fill_(~inside[:, None], 0.0)

    def _padded_clean(self, name: str, margin: int, fill: float) -> torch.Tensor:
        key = (name, margin, fill)
        if key not in self._padded:
            self._padded[key] = engine_layout(F.pad(self.clean[name], (margin,) * 4, value=fill))
        return self._padded[key]

    def _dense(self, node: fx.Node, kind: Dense, env: dict[str, Any], ck: Chunk) -> Any:
        if kind.rule == "gap":
            delta = env[node.all_input_nodes[0].name].delta
            h, w = self.clean[node.all_input_nodes[0].name].shape[2:]
            pooled = self.clean[node.name]
            base = pooled[ck.image:ck.image + 1] if ck.uniform else pooled[ck.img]
            return base + delta.sum(dim=(2, 3), keepdim=True) / (h * w)
        args = fx.node.map_arg(node.args, lambda n: self._value(n, env, ck))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self._value(n, env, ck))
        return self._call(node, args, kwargs)

    def _value(self, arg: Any, env: dict[str, Any], ck: Chunk) -> Any:
        """A node's full value for dense computation (maps are rebuilt whole: slow path)."""
        if not isinstance(arg, fx.Node):
            return arg
        entry = env[arg.name]
        if not isinstance(entry, _Change):
            return entry
        clean = self.clean[arg.name]
        h, w = clean.shape[2:]
        full = place(entry.delta, entry.origin, (0, 0), (h, w), ck)
        return (clean[ck.image:ck.image + 1] if ck.uniform else clean[ck.img]) + full

    def _call(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)
        raise RuntimeError(f"cannot evaluate node {node.format_node()}")


def _even_padding(delta: torch.Tensor, at: Origin, start: Origin, extent: tuple[int, int]
                  ) -> tuple[int, int] | None:
    """(rows, columns) of zeros that pad ``delta`` (corner ``at``) to exactly the span a
    convolution reads (corner ``start``), when they are the same on both sides of each axis;
    None otherwise (a placed copy then does it)."""
    top, left = int(at[0]) - int(start[0]), int(at[1]) - int(start[1])
    bottom = int(start[0]) + extent[0] - int(at[0]) - int(delta.shape[2])
    right = int(start[1]) + extent[1] - int(at[1]) - int(delta.shape[3])
    return (top, left) if top == bottom >= 0 and left == right >= 0 else None


def _reads(kind: Spatial, origin: Origin, size: tuple[int, int]) -> tuple[Origin, tuple[int, int]]:
    """Top-left corner and size of the input positions a window of outputs reads."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kind.kernel, kind.stride, kind.padding, kind.dilation
    start = (origin[0] * sh - ph, origin[1] * sw - pw)
    extent = ((size[0] - 1) * sh + (kh - 1) * dh + 1, (size[1] - 1) * sw + (kw - 1) * dw + 1)
    return start, extent

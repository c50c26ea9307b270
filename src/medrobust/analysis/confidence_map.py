"""Exhaustive one-pixel confidence maps (Alatalo et al. 2022, section 2.2 and Algorithm 1).

For every pixel and every colour of a grid, score the image with that pixel set to that colour,
then reduce to per-pixel min, max and mean. The grid is {0, S, 2S, ...} per channel and always
includes 255 (step 5: the paper's 52 levels, 140,608 RGB colours). Because the grid is searched
exhaustively, the map also answers the attack question outright: either some pixel and grid colour
breaks the prediction (and here it is), or the image is one-pixel robust on this grid.

Scores are computed by a pixel engine: ``fast`` (the exact receptive-field cone engine) or
``reference`` (plain full forward passes). A partial map is checkpointed to disk as it goes, so a
killed map resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrobust.attacks.objective import build_objectives
from medrobust.errors import ConfigError
from medrobust.models.classifier import Classifier
from medrobust.models.engines import make_engine
from medrobust.utils.progress import progress
from medrobust.utils.validation import check_range


def colour_levels(step: int) -> list[int]:
    """{0, step, 2*step, ...} below 256, with 255 always included."""
    check_range("step", step, 1, 255)
    levels = list(range(0, 256, step))
    if levels[-1] != 255:
        levels.append(255)
    return levels


def colour_grid(step: int, channels: int) -> np.ndarray:
    """(n_colours, channels) uint8 grid, every combination of the levels, the last channel
    varying fastest (itertools.product's order, built by NumPy: 0.3 ms instead of 60 ms for
    the paper's 140,608 colours, which a GPU map paid per call)."""
    levels = np.asarray(colour_levels(step), dtype=np.uint8)
    mesh = np.meshgrid(*([levels] * channels), indexing="ij")
    return np.stack(mesh, axis=-1).reshape(-1, channels)


@dataclass
class ConfidenceMap:
    """Per-pixel reductions of the score over the colour grid, plus the exhaustive verdict."""

    min: np.ndarray  # (H, W)
    max: np.ndarray
    mean: np.ndarray
    argmin_colour: np.ndarray  # (H, W, C) uint8
    argmax_colour: np.ndarray
    success: np.ndarray  # (H, W) bool: some grid colour at this pixel reaches the goal
    step: int
    score_name: str
    label: int
    clean_score: float
    objective: str
    engine: str
    seconds: float
    passes: int

    @property
    def robust(self) -> bool:
        """True when no pixel and grid colour reaches the attack's goal."""
        return not bool(self.success.any())

    def best_attack(self) -> dict[str, Any] | None:
        """The pixel and colour that fool the model, moving the score furthest (None when the
        map says robust: no pixel and colour of the grid reaches the goal)."""
        best = self.strongest_change()
        return best if best["success"] else None

    def strongest_change(self) -> dict[str, Any]:
        """The pixel and colour that move the score furthest in the attack's direction, whether
        or not that reaches the goal (how close a robust image comes)."""
        raise_score = self.objective in ("neg2pos", "targeted")
        grid = self.max if raise_score else self.min
        y, x = np.unravel_index(int(np.argmax(grid) if raise_score else np.argmin(grid)),
                                grid.shape)
        colour = (self.argmax_colour if raise_score else self.argmin_colour)[y, x]
        return {"x": int(x), "y": int(y), "colour": colour.tolist(), "score": float(grid[y, x]),
                "success": bool(self.success[y, x]), "successful_pixels": int(self.success.sum())}

    def __repr__(self) -> str:
        h, w = self.min.shape
        verdict = "robust on this grid" if self.robust else (
            f"{int(self.success.sum())} of {h * w} pixels can fool it")
        return (f"ConfidenceMap({h}x{w}, step {self.step}, {self.score_name} clean "
                f"{self.clean_score:.4f}, min {np.nanmin(self.min):.4f}, max "
                f"{np.nanmax(self.max):.4f}: {verdict}; {self.engine} engine, "
                f"{self.seconds:.1f} s)")

    def save(self, path: str | Path) -> Path:
        """Write the maps and metadata to one .npz (no pickles)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}
        np.savez_compressed(path, min=self.min, max=self.max, mean=self.mean,
                            argmin_colour=self.argmin_colour, argmax_colour=self.argmax_colour,
                            success=self.success, meta=np.array(json.dumps(meta)))
        return path

    @staticmethod
    def load(path: str | Path) -> ConfidenceMap:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return ConfidenceMap(min=z["min"], max=z["max"], mean=z["mean"],
                                 argmin_colour=z["argmin_colour"],
                                 argmax_colour=z["argmax_colour"], success=z["success"], **meta)


#: Grids with fewer colours than PACK_BELOW share engine calls between pixels, about PACK_ROWS
#: rows per call (measured best for the cone engine's mixed-pixel path on a 2-core CPU).
PACK_BELOW, PACK_ROWS = 128, 256


def confidence_map(classifier: Classifier, image: np.ndarray, label: int, step: int = 5,
                   score_class: int | None = None, engine: str = "fast",
                   pixels: list[tuple[int, int]] | None = None,
                   checkpoint: str | Path | None = None, chunk: int | None = None,
                   show_progress: bool = False) -> ConfidenceMap:
    """Score every (pixel, grid colour) of one uint8 (H,W,C) image.

    ``label`` is the true class; the score is P(``score_class``) (default: the label) for softmax
    heads and P(positive) for sigmoid heads. ``pixels`` restricts the map to (x, y) positions
    (others stay NaN). ``checkpoint`` names a file where the partial map is saved as it goes and
    from which it resumes. ``chunk``: colours per engine call; by default the engine's own
    size: 256 for the cone engine on a CPU (its windows stay in cache: 1.2x the rate of 512 and
    several times that of 4096; compare ``benchmarks/confidence_map.py --chunk 512``), tens of
    thousands on a GPU (``ConeEngine.rows_per_call``).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ConfigError(f"expected one uint8 (H,W,C) image, got {image.dtype} {image.shape}")
    h, w, c = image.shape
    if not 0 <= label < classifier.num_classes:
        raise ConfigError(f"label must lie in 0..{classifier.num_classes - 1}")
    sigmoid = classifier.head == "sigmoid"
    cls = 1 if sigmoid else (label if score_class is None else int(score_class))
    if not 0 <= cls < classifier.num_classes:
        raise ConfigError(f"score_class must lie in 0..{classifier.num_classes - 1}")
    objective = build_objectives(classifier.head, np.array([label]), None, "auto", (0.5, 0.5))[0]
    x = classifier.to_tensor(image)
    eng = make_engine(engine, classifier, x, **({} if chunk is None else {"chunk": chunk}))
    chunk = eng.rows_per_call if chunk is None else chunk
    dev = x.device
    grid_u8 = colour_grid(step, c)
    grid = torch.from_numpy(grid_u8).to(dev, torch.float32).div_(255.0)
    n_col = grid.shape[0]
    todo = [(xx, yy) for yy in range(h) for xx in range(w)] if pixels is None else list(pixels)
    for xx, yy in todo:
        if not (0 <= xx < w and 0 <= yy < h):
            raise ConfigError(f"pixel ({xx}, {yy}) is outside the {w}x{h} image")

    # Without a checkpoint there is nothing to key (hashing every weight per Ray tile would be
    # waste).
    key = {} if checkpoint is None else map_key(classifier, image, label, step, score_class)
    state = _State.start(h, w, c, checkpoint, key)
    clean = float(classifier.probabilities_tensor(x)[0, cls])
    started = time.perf_counter()
    last_save = started
    pending = [(xx, yy) for xx, yy in todo if not state.done[yy, xx]]
    per_call = packing_group(step, c)
    bar = progress(total=len(pending), desc="confidence map", unit="px",
                   disable=not show_progress)
    for i in range(0, len(pending), per_call):
        group = pending[i:i + per_call]
        stats = _score_pixels(eng, group, grid, cls, objective, chunk)
        for (xx, yy), (lo, hi, mean, lo_i, hi_i, ok) in zip(group, stats, strict=True):
            state.record(xx, yy, lo, hi, mean, grid_u8[lo_i], grid_u8[hi_i], ok)
        bar.update(len(group))
        if checkpoint is not None and time.perf_counter() - last_save > 20:
            state.save(checkpoint)
            last_save = time.perf_counter()
    bar.close()
    if checkpoint is not None:
        state.save(checkpoint)
    name = classifier.class_names[cls]
    return ConfidenceMap(
        min=state.min, max=state.max, mean=state.mean, argmin_colour=state.argmin,
        argmax_colour=state.argmax, success=state.success, step=step,
        score_name=f"P({name})", label=label, clean_score=clean, objective=objective.kind,
        engine=engine if getattr(eng, "fallback_reason", None) is None else "reference",
        seconds=time.perf_counter() - started, passes=len(pending) * n_col)


def packing_group(step: int, channels: int) -> int:
    """Pixels a map scores in one engine call. Small grids pack several pixels into one call
    (mixed pixels take the engine's general path); large grids give each pixel calls of its
    own, where every row shares one pixel and the fast engine works on that pixel's exact cone
    with plain slicing (its fastest path). Ray tiles are whole multiples of it, so every call
    sees the pixels it would see in one piece."""
    n_col = colour_grid(step, channels).shape[0]
    return max(1, PACK_ROWS // n_col) if n_col < PACK_BELOW else 1


def map_key(classifier: Classifier, image: np.ndarray, label: int, step: int,
            score_class: int | None) -> dict[str, Any]:
    """What a partial map's checkpoint is valid for: this exact model (weights and buffers),
    image, grid and scored class. Resuming another model's or image's partial map would
    silently mix two maps; a Ray driver merging tiles writes the same key, so either side
    resumes the other."""
    cls = 1 if classifier.head == "sigmoid" else (label if score_class is None
                                                  else int(score_class))
    return {"step": step, "cls": cls, "label": label, "engine_independent": True,
            "model": model_digest(classifier), "image": image_digest(image)}


def _score_pixels(eng: Any, pixels: list[tuple[int, int]], grid: torch.Tensor, cls: int,
                  objective: Any, chunk: int) -> list[tuple[float, float, float, int, int, bool]]:
    """Per pixel: min, max and mean score over the grid, argmin/argmax grid index, success.

    Several pixels share calls (small grids; mixed-pixel rows); one pixel gets calls of its own
    of ``chunk`` colours (same-pixel rows). Scores stay on the device until the pixel group is
    done: one transfer per group instead of a few per call keeps a GPU busy."""
    dev, n_col, p = grid.device, grid.shape[0], len(pixels)
    xy = torch.tensor(pixels, device=dev).repeat_interleave(n_col, dim=0)
    colours = grid.repeat(p, 1)[:, None, :]
    rows = p * n_col
    step = rows if p > 1 else chunk
    image = torch.zeros(rows, dtype=torch.long, device=dev)
    probs = torch.cat([eng.probabilities(image[s:s + step], xy[s:s + step, :1],
                                         xy[s:s + step, 1:], colours[s:s + step])
                       for s in range(0, rows, step)])
    score = probs[:, cls].view(p, n_col)
    ok = objective.success(probs.double().cpu().numpy()).reshape(p, n_col).any(axis=1)
    lo, lo_i = score.min(dim=1)
    hi, hi_i = score.max(dim=1)
    mean = score.double().sum(dim=1) / n_col
    lo, lo_i, hi, hi_i, mean = (t.tolist() for t in (lo, lo_i, hi, hi_i, mean))
    return [(lo[i], hi[i], mean[i], lo_i[i], hi_i[i], bool(ok[i])) for i in range(p)]


def model_digest(classifier: Classifier) -> str:
    """sha256 over the classifier's head and every weight and buffer (names, dtypes, shapes,
    bytes) in state_dict order, so any change of weights, even in place through ``.data``,
    gives another digest."""
    h = hashlib.sha256(classifier.head.encode())
    for name, tensor in classifier.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def image_digest(image: np.ndarray) -> str:
    """sha256 of one uint8 image's shape and bytes."""
    image = np.ascontiguousarray(image)
    return hashlib.sha256(f"{image.dtype}|{image.shape}|".encode() + image.tobytes()).hexdigest()


#: arrays of a partial map file, with their per-pixel trailing shape and dtype kind
_PARTIAL_ARRAYS = {"min": ((), "f"), "max": ((), "f"), "mean": ((), "f"), "argmin": (("c",), "u"),
                   "argmax": (("c",), "u"), "success": ((), "b"), "done": ((), "b")}


@dataclass
class _State:
    """A partial map: what is done so far, checkpointable to an .npz."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    argmin: np.ndarray
    argmax: np.ndarray
    success: np.ndarray
    done: np.ndarray
    key: str

    @staticmethod
    def start(h: int, w: int, c: int, checkpoint: str | Path | None,
              key: dict[str, Any]) -> _State:
        """Resume ``checkpoint`` when it was written for exactly ``key``; otherwise start afresh
        (with a one-line warning when a file was there), never mixing two maps."""
        key_s = json.dumps(key, sort_keys=True)
        if checkpoint is not None and Path(checkpoint).is_file():
            loaded, problem = _State._load(Path(checkpoint), h, w, c, key_s)
            if loaded is not None:
                return loaded
            warnings.warn(f"partial map {checkpoint} {problem}; starting this map afresh",
                          stacklevel=3)
        nan = np.full((h, w), np.nan)
        return _State(nan.copy(), nan.copy(), nan.copy(), np.zeros((h, w, c), np.uint8),
                      np.zeros((h, w, c), np.uint8), np.zeros((h, w), bool),
                      np.zeros((h, w), bool), key_s)

    @staticmethod
    def _load(path: Path, h: int, w: int, c: int, key_s: str) -> tuple[_State | None, str]:
        """The saved state if the file is intact and was written for ``key_s``, else the reason."""
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("key", *_PARTIAL_ARRAYS) if k not in z.files]
                if missing:
                    return None, f"is corrupt (missing {', '.join(missing)})"
                if str(z["key"]) != key_s:
                    return None, "was made for another model, image or grid"
                arrays = {k: z[k] for k in _PARTIAL_ARRAYS}
        except Exception as exc:  # any unreadable file is just a lost checkpoint
            return None, f"is unreadable ({type(exc).__name__}: {exc})"
        for name, (tail, kind) in _PARTIAL_ARRAYS.items():
            shape = (h, w, c) if tail else (h, w)
            if arrays[name].shape != shape or arrays[name].dtype.kind != kind:
                return None, (f"is corrupt ({name} is {arrays[name].dtype} "
                              f"{arrays[name].shape}, expected {shape})")
        return _State(*(arrays[k] for k in _PARTIAL_ARRAYS), key_s), ""

    def record(self, x: int, y: int, lo: float, hi: float, mean: float, argmin: np.ndarray,
               argmax: np.ndarray, success: bool) -> None:
        self.min[y, x], self.max[y, x], self.mean[y, x] = lo, hi, mean
        self.argmin[y, x], self.argmax[y, x] = argmin, argmax
        self.success[y, x] = success
        self.done[y, x] = True

    def save(self, path: str | Path) -> None:
        """Atomic write: a kill during the save leaves the previous checkpoint intact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, min=self.min, max=self.max, mean=self.mean, argmin=self.argmin,
                 argmax=self.argmax, success=self.success, done=self.done,
                 key=np.array(self.key))
        os.replace(tmp, path)

"""The one-pixel attack (Su, Vargas, Sakurai 2019) by differential evolution, batched across images.

Peers (torchattacks, IBM ART, the Keras original) wrap scipy's differential_evolution and attack
one image at a time. Here the populations of all images still running are scored together in
large forward batches, and each image stops on its own success, so a campaign's cost is set by the
number of queries, not by Python overhead per image. Candidates are scored by a pluggable
``PixelEngine``.

Each image draws from its own random stream (seed plus the image's key), so an image attacked
alone or inside a batch sees the same numbers.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medrobust.attacks.base import Attack, output_device
from medrobust.attacks.objective import DIRECTIONS, Objective, build_objectives
from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError
from medrobust.models.classifier import Classifier
from medrobust.models.engines import ENGINES, make_engine
from medrobust.utils.seeding import numpy_rng
from medrobust.utils.validation import check_choice, check_range

STRATEGIES = ("rand1", "best1")
INITS = ("normal", "uniform")


@dataclass
class OnePixelResult:
    """The outcome for one image. Pixels are (x = column, y = row); colours 0..255 per channel."""

    status: str  # success | failed | skipped (already misclassified / goal met before attack)
    direction: str
    label: int
    target: int | None
    queries: int
    generations: int
    pixels: list[tuple[int, int]] = field(default_factory=list)
    colours: list[list[int]] = field(default_factory=list)
    original_colours: list[list[int]] = field(default_factory=list)
    original_scores: list[float] = field(default_factory=list)
    final_scores: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return self.status == "success"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The adversarial image: a copy of uint8 (H,W,C) ``image`` with the pixels written."""
        out = np.array(image, copy=True)
        for (x, y), colour in zip(self.pixels, self.colours, strict=True):
            out[y, x, :] = colour
        return out

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["success"] = self.success
        return row


class OnePixel(Attack):
    """Differential-evolution k-pixel attack; the defaults are the paper's.

    Parameters
    ----------
    pixels: number of pixels changed (k).
    population: candidates per image (paper: 400).
    generations: maximum DE generations (paper: 100); at most population * (generations + 1)
        queries per image.
    f: DE mutation factor (paper: 0.5).
    crossover: binomial crossover rate, or None for none (paper: none; the trial is the mutant).
    strategy: ``rand1`` (paper) or ``best1``.
    init: ``normal`` (colours from N(128, 127), paper) or ``uniform``; positions are uniform.
    direction: sigmoid heads only: ``auto`` (from the label), ``pos2neg`` or ``neg2pos``.
    threshold: sigmoid success threshold, or (pos2neg, neg2pos) thresholds; the paper's partial
        success is (0.9, 0.1).
    engine: candidate scorer: ``fast`` (the exact receptive-field cone engine; k > 1 and models
        it cannot trace use the reference) or ``reference`` (dense forward passes).
    progress: show a bar on stderr that moves every generation (``Attack``).
    """

    name = "onepixel"

    def __init__(self, classifier: Classifier, pixels: int = 1, population: int = 400,
                 generations: int = 100, f: float = 0.5, crossover: float | None = None,
                 strategy: str = "rand1", init: str = "normal", direction: str = "auto",
                 threshold: float | tuple[float, float] = 0.5, engine: str = "fast",
                 max_batch_images: int = 64, seed: int = 0, progress: bool = False) -> None:
        super().__init__(classifier, seed, progress)
        self.classifier = classifier
        self.pixels = int(check_range("pixels", pixels, 1))
        self.population = int(check_range("population", population, 4))
        self.generations = int(check_range("generations", generations, 0))
        self.f = float(check_range("f", f, 0, 2, low_inclusive=False))
        self.crossover = None if crossover is None else float(
            check_range("crossover", crossover, 0, 1, low_inclusive=False))
        self.strategy = check_choice("strategy", strategy, STRATEGIES)
        self.init = check_choice("init", init, INITS)
        self.direction = check_choice("direction", direction, ("auto", *DIRECTIONS))
        thr = (threshold, threshold) if isinstance(threshold, (int, float)) else tuple(threshold)
        if len(thr) != 2:
            raise ConfigError("threshold must be a number or a (pos2neg, neg2pos) pair")
        self.thresholds = (float(check_range("threshold", thr[0], 0, 1)),
                           float(check_range("threshold", thr[1], 0, 1)))
        self.engine = check_choice("engine", engine, ENGINES)
        #: what actually scored the last ``run`` (``fast``, or ``reference (...)`` after a fallback)
        self.engines_used: set[str] = set()
        self.max_batch_images = int(check_range("max_batch_images", max_batch_images, 1))
        if self.direction != "auto" and classifier.head != "sigmoid":
            raise ConfigError("direction applies to sigmoid (single-score) models only")
        if self.thresholds != (0.5, 0.5) and classifier.head != "sigmoid":
            # a softmax attack succeeds when the argmax moves: a threshold would be ignored
            raise ConfigError("threshold applies to sigmoid (single-score) models only")

    def params(self) -> dict[str, Any]:
        return {"pixels": self.pixels, "population": self.population,
                "generations": self.generations, "f": self.f, "crossover": self.crossover,
                "strategy": self.strategy, "init": self.init, "direction": self.direction,
                "thresholds": list(self.thresholds), "engine": self.engine, "seed": self.seed}

    def check_images(self, shape: tuple[int, ...]) -> None:
        """Refuse images of (C,H,W) ``shape`` this attack cannot run on, before a campaign opens
        (like ``PGD.check_images``): k distinct positions must exist, or drawing them never ends."""
        h, w = int(shape[-2]), int(shape[-1])
        if self.pixels > h * w:
            raise ConfigError(f"pixels must be at most {h * w} for {h}x{w} images, got "
                              f"{self.pixels}")

    @property
    def max_queries(self) -> int:
        return self.population * (self.generations + 1)

    # ------------------------------------------------------------------------------------------
    def run(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | list[int],
            targets: np.ndarray | list[int] | None = None,
            keys: list[int | str] | None = None, show_progress: bool = False,
            on_result: Callable[[int, OnePixelResult], None] | None = None,
            on_progress: Callable[[float], None] | None = None) -> AttackResult:
        """Attack each image (pixel space: NumPy (N,H,W,C) or torch (N,C,H,W)).

        The result's extras hold ``records``, one ``OnePixelResult`` per image in order (status,
        pixels, colours, scores), and ``status``; ``success`` excludes skipped images (already
        misclassified) and ``queries`` counts model evaluations.

        ``keys`` name each image's random stream (a campaign passes dataset indices); by default
        a checksum of the image's bytes, so the same image gets the same stream anywhere.
        ``on_result(position, result)`` is called the moment each image finishes (campaigns
        commit it to the store then). ``on_progress(images)`` reports progress in images as the
        generations run (1/(G+1) of an image per image-generation; when an image finishes early
        its ticks are taken back, so the caller that counts the finished image as 1 stays exact):
        a bar that moves every generation has a steady ETA, one that moves per image does not.
        ``show_progress`` shows that bar on stderr for this call, as ``progress=True`` does for
        every call.
        """
        clf = self.classifier
        x = clf.to_tensor(images)
        labels_np = np.asarray(labels, dtype=np.int64).reshape(-1)
        targets_np = None if targets is None else np.asarray(targets, dtype=np.int64).reshape(-1)
        if labels_np.shape[0] != x.shape[0] or (
                targets_np is not None and targets_np.shape[0] != x.shape[0]):
            raise ConfigError("images, labels and targets must have the same length")
        if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= clf.num_classes):
            raise ConfigError(f"labels must lie in 0..{clf.num_classes - 1}")
        if targets_np is not None and clf.head == "softmax" and np.any(targets_np == labels_np):
            raise ConfigError("a target equal to the true label is not an attack")
        self.check_images(tuple(x.shape[1:]))
        if keys is None:
            keys = [zlib.crc32(x[i].cpu().numpy().tobytes()) for i in range(x.shape[0])]
        self.engines_used = set()
        objectives = build_objectives(clf.head, labels_np, targets_np, self.direction,
                                      self.thresholds)
        results: list[OnePixelResult] = []
        with self.progress_bar(x.shape[0], "one-pixel", show=show_progress) as bar:

            def tick(images: float) -> None:
                bar.advance(images)
                if on_progress is not None:
                    on_progress(images)

            def done(position: int, result: OnePixelResult) -> None:
                bar.advance(1)
                if on_result is not None:
                    on_result(position, result)

            for s in range(0, x.shape[0], self.max_batch_images):
                sl = slice(s, s + self.max_batch_images)
                results.extend(self._run_batch(x[sl], objectives[sl], list(keys[sl]), done, s,
                                               tick))
        return self._result(x, results, images)

    @staticmethod
    def _result(x: torch.Tensor, records: list[OnePixelResult], images: Any) -> AttackResult:
        """The shared result type: ``x`` with each record's pixels written."""
        adv = x.clone()
        for i, r in enumerate(records):
            for (px, py), colour in zip(r.pixels, r.colours, strict=True):
                adv[i, :, py, px] = torch.as_tensor(colour, dtype=adv.dtype) / 255.0
        return AttackResult(
            adv.to(output_device(images, adv.device)),
            success=torch.tensor([r.success for r in records], dtype=torch.bool),
            queries=torch.tensor([r.queries for r in records], dtype=torch.long),
            extras={"records": records, "status": [r.status for r in records]})

    # ------------------------------------------------------------------------------------------
    def _seed_key(self, key: int | str) -> int:
        return key if isinstance(key, int) else zlib.crc32(str(key).encode())

    def _initial_population(self, rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
        p, k = self.population, self.pixels
        pop = np.empty((p, k, 2 + c))
        pop[:, :, 0] = rng.integers(0, w, size=(p, k))
        pop[:, :, 1] = rng.integers(0, h, size=(p, k))
        if self.init == "normal":
            pop[:, :, 2:] = np.clip(np.rint(rng.normal(128, 127, size=(p, k, c))), 0, 255)
        else:
            pop[:, :, 2:] = rng.integers(0, 256, size=(p, k, c))
        return self._distinct_positions(rng, pop.reshape(p, -1), h, w, c)

    def _distinct_positions(self, rng: np.random.Generator, pop: np.ndarray, h: int, w: int,
                            c: int) -> np.ndarray:
        """Redraw colliding positions so a k-pixel candidate really changes k locations."""
        if self.pixels == 1:
            return pop
        view = pop.reshape(pop.shape[0], self.pixels, 2 + c)
        flat = view[:, :, 1] * w + view[:, :, 0]
        for row in np.flatnonzero([len(set(r)) < self.pixels for r in flat.tolist()]):
            seen: set[float] = set()
            for j in range(self.pixels):
                while flat[row, j] in seen:
                    view[row, j, 0] = rng.integers(0, w)
                    view[row, j, 1] = rng.integers(0, h)
                    flat[row, j] = view[row, j, 1] * w + view[row, j, 0]
                seen.add(flat[row, j])
        return pop

    def _trial(self, rng: np.random.Generator, pop: np.ndarray, fit: np.ndarray,
               upper: np.ndarray) -> np.ndarray:
        """One DE generation of trial vectors (mutation, optional crossover, bounds, rounding)."""
        p, d = pop.shape
        r = _distinct_others(rng, p, 3)
        if self.strategy == "rand1":
            mutant = pop[r[:, 0]] + self.f * (pop[r[:, 1]] - pop[r[:, 2]])
        else:
            mutant = pop[int(np.argmin(fit))] + self.f * (pop[r[:, 0]] - pop[r[:, 1]])
        if self.crossover is not None:
            mask = rng.random((p, d)) < self.crossover
            mask[np.arange(p), rng.integers(0, d, size=p)] = True
            mutant = np.where(mask, mutant, pop)
        h, w = int(upper[1]) + 1, int(upper[0]) + 1
        return self._distinct_positions(rng, np.clip(np.rint(mutant), 0, upper), h, w,
                                        d // self.pixels - 2)

    def _score(self, engine, index: np.ndarray, cand: np.ndarray, c: int) -> torch.Tensor:
        """Probabilities for candidates (M, k*(2+C)) of images ``index`` (M,)."""
        dev = engine.images.device
        cand_t = torch.from_numpy(cand.reshape(cand.shape[0], self.pixels, 2 + c)).to(dev)
        xs = cand_t[:, :, 0].long()
        ys = cand_t[:, :, 1].long()
        colours = cand_t[:, :, 2:].float() / 255.0
        return engine.probabilities(torch.from_numpy(index).to(dev), xs, ys, colours)

    def _run_batch(self, x: torch.Tensor, objectives: list[Objective], keys: list[int | str],
                   on_result: Callable[[int, OnePixelResult], None] | None, offset: int,
                   tick: Callable[[float], None] = lambda images: None
                   ) -> list[OnePixelResult]:
        start = time.perf_counter()
        clf = self.classifier
        _, c, h, w = x.shape
        upper = np.tile(np.array([w - 1, h - 1] + [255] * c, dtype=np.float64), self.pixels)
        engine = make_engine(self.engine, clf, x, batch_consistent=True)
        self.engines_used.add(_engine_description(engine))
        clean = clf.probabilities_tensor(x, fixed_batch=True).double().cpu().numpy()
        rngs = [numpy_rng(self.seed, self._seed_key(k)) for k in keys]
        orig_u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        batch = _Batch(self, engine, objectives, clean, orig_u8, start, offset, on_result, tick)
        batch.skip_met()
        batch.evolve({i: self._initial_population(rngs[i], h, w, c) for i in batch.active},
                     rngs, upper)
        self.engines_used.add(_engine_description(engine))  # a fallback may have come mid-run
        return [r for r in batch.results if r is not None]


class _Batch:
    """The state the steps of one ``OnePixel._run_batch`` share: the images still running, their
    populations, fitnesses and query counts, and the progress already reported for each."""

    def __init__(self, attack: OnePixel, engine: Any, objectives: list[Objective],
                 clean: np.ndarray, orig_u8: np.ndarray, start: float, offset: int,
                 on_result: Callable[[int, OnePixelResult], None] | None,
                 tick: Callable[[float], None]) -> None:
        self.attack, self.engine, self.objectives = attack, engine, objectives
        self.clean, self.orig_u8, self.start, self.offset = clean, orig_u8, start, offset
        self.on_result, self.tick = on_result, tick
        b, self.c = orig_u8.shape[0], orig_u8.shape[3]
        self.names = attack.classifier.class_names
        self.results: list[OnePixelResult | None] = [None] * b
        self.ticked = np.zeros(b)  # progress reported per image so far (in images)
        self.share = 1.0 / (attack.generations + 1)
        self.active: list[int] = []
        self.pops: dict[int, np.ndarray] = {}
        self.fits: dict[int, np.ndarray] = {}
        self.best_probs: dict[int, np.ndarray] = {}
        self.queries: dict[int, int] = {}

    def finish(self, i: int, status: str, queries: int, gens: int, best: np.ndarray | None,
               probs: np.ndarray | None) -> None:
        obj, k = self.objectives[i], self.attack.pixels
        res = OnePixelResult(status=status, direction=obj.describe(self.names), label=obj.label,
                             target=obj.target, queries=queries, generations=gens,
                             original_scores=self.clean[i].tolist(),
                             seconds=time.perf_counter() - self.start)
        if best is not None and probs is not None:
            vec = best.reshape(k, 2 + self.c).astype(np.int64)
            res.pixels = [(int(v[0]), int(v[1])) for v in vec]
            res.colours = [v[2:].tolist() for v in vec]
            res.original_colours = [self.orig_u8[i, y, x_].tolist() for x_, y in res.pixels]
            res.final_scores = probs.tolist()
        else:
            res.final_scores = res.original_scores
        self.results[i] = res
        if self.ticked[i]:
            self.tick(-self.ticked[i])  # the finished image counts as one whole image below
            self.ticked[i] = 0.0
        if self.on_result is not None:
            self.on_result(self.offset + i, res)

    def generation_done(self) -> None:
        if self.active:
            self.ticked[self.active] += self.share
            self.tick(self.share * len(self.active))

    def skip_met(self) -> None:
        """Finish the images whose goal the clean image already meets; the rest are active."""
        for i, obj in enumerate(self.objectives):
            if bool(obj.success(self.clean[i:i + 1])[0]):
                self.finish(i, "skipped", 0, 0, None, None)
            else:
                self.active.append(i)
        self.queries = dict.fromkeys(self.active, 0)

    def evaluate(self, cands: dict[int, np.ndarray]
                 ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Score every image's candidates in one batch: (fitness, probabilities, success)."""
        order = list(cands)
        if not order:
            return {}
        index = np.concatenate([np.full(len(cands[i]), i) for i in order])
        probs = self.attack._score(self.engine, index,
                                   np.concatenate([cands[i] for i in order]), self.c)
        probs = probs.double().cpu().numpy()
        out, pos = {}, 0
        for i in order:
            n = len(cands[i])
            pr = probs[pos:pos + n]
            pos += n
            self.queries[i] += n
            fit = self.objectives[i].fitness(pr)
            ok = self.objectives[i].success(pr)
            out[i] = (fit, pr, ok)
        return out

    def settle(self, i: int, gen: int, cand: np.ndarray, fit: np.ndarray, pr: np.ndarray,
               ok: np.ndarray) -> bool:
        """Finish image i if any evaluated candidate succeeded (best-fitness success)."""
        if not ok.any():
            return False
        j = int(np.flatnonzero(ok)[np.argmin(fit[ok])])
        self.finish(i, "success", self.queries[i], gen, cand[j], pr[j])
        return True

    def evolve(self, pops: dict[int, np.ndarray], rngs: list[np.random.Generator],
               upper: np.ndarray) -> None:
        """Differential evolution from the initial ``pops`` until each image succeeds or the
        generations run out (then it fails with its best candidate)."""
        self.pops = pops
        active, fits, best_probs = self.active, self.fits, self.best_probs
        for i, (fit, pr, ok) in self.evaluate(pops).items():
            if self.settle(i, 0, pops[i], fit, pr, ok):
                active.remove(i)
            else:
                fits[i] = fit
                best_probs[i] = pr.copy()
        self.generation_done()
        generations = self.attack.generations
        for gen in range(1, generations + 1):
            if not active:
                break
            trials = {i: self.attack._trial(rngs[i], pops[i], fits[i], upper) for i in active}
            for i, (fit, pr, ok) in self.evaluate(trials).items():
                if self.settle(i, gen, trials[i], fit, pr, ok):
                    active.remove(i)
                    continue
                better = fit < fits[i]
                pops[i][better] = trials[i][better]
                fits[i][better] = fit[better]
                best_probs[i][better] = pr[better]
            if gen < generations:
                self.generation_done()
        for i in list(active):
            j = int(np.argmin(fits[i]))
            self.finish(i, "failed", self.queries[i], generations, pops[i][j], best_probs[i][j])


def _engine_description(engine: Any) -> str:
    describe = getattr(engine, "describe", None)
    return describe() if callable(describe) else engine.name


def _distinct_others(rng: np.random.Generator, p: int, n: int) -> np.ndarray:
    """(p, n) indices: row i holds n distinct members of 0..p-1, none equal to i.

    Sampling without replacement by index shifting: draw u_j from a range shrunk by the j
    already-excluded values, then step over the excluded values in increasing order. Vectorised
    over the population, which keeps DE's per-generation overhead small next to the model.
    """
    excluded = np.arange(p)[:, None]
    out = np.empty((p, n), dtype=np.int64)
    for j in range(n):
        u = rng.integers(0, p - 1 - j, size=p)
        ex = np.sort(excluded, axis=1)
        for col in range(ex.shape[1]):
            u = u + (u >= ex[:, col])
        out[:, j] = u
        excluded = np.concatenate([excluded, u[:, None]], axis=1)
    return out

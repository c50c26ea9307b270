"""Cone engine on a GPU: agreement with the reference engine and confidence-map throughput.

Random-weight smallcnn and mitosisnet (64x64 RGB, as in ``confidence_map.py``): the maximum
difference between the engines on 512 mixed candidates and on 256 colours of one pixel, then
passes per second of a step-5 map of one pixel (140,608 colours) for the cone engine at several
colours per call and for the reference engine, and the projected full paper-grid map.

    python benchmarks/gpu_engine.py --out benchmarks/results     # needs a CUDA device
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medrobust.analysis.confidence_map import confidence_map
from medrobust.models import Classifier, build_model
from medrobust.models.engines import ConeEngine, DenseEngine

MODELS = {"smallcnn": {}, "mitosisnet": {"padding": "keras"}}
STEP5 = 140_608
PAPER_PASSES = 64 * 64 * STEP5


def classifier(name: str, device: str) -> Classifier:
    torch.manual_seed(0)
    model = build_model(name, 3, 2, **MODELS[name])
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(16, 3, 64, 64))
    head = "sigmoid" if name == "mitosisnet" else "softmax"
    return Classifier(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=("a", "b"), head=head,
                      device=device)


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, chunks: list[int]) -> dict:
    clf = classifier(name, "cuda")
    x = torch.rand(4, 3, 64, 64, device="cuda")
    fast, ref = ConeEngine(clf, x), DenseEngine(clf, x)
    g = torch.Generator().manual_seed(1)
    n = 512
    cand = [torch.randint(0, 4, (n,), generator=g), torch.randint(0, 64, (n, 1), generator=g),
            torch.randint(0, 64, (n, 1), generator=g), torch.rand(n, 1, 3, generator=g)]
    cand = [t.cuda() for t in cand]
    same = (cand[0][:1].expand(256), cand[1][:1].expand(256, 1), cand[2][:1].expand(256, 1),
            cand[3][:256])
    out = {"fallback": fast.fallback_reason,
           "max_diff_mixed": float((fast.probabilities(*cand) - ref.probabilities(*cand))
                                   .abs().max()),
           "max_diff_same_pixel": float((fast.probabilities(*same) - ref.probabilities(*same))
                                        .abs().max())}
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    for chunk in chunks:
        seconds = timed(lambda c=chunk: confidence_map(clf, image, 1, step=5, engine="fast",
                                                       pixels=[(31, 30)], chunk=c,
                                                       show_progress=False))
        out[f"fast_passes_per_s_chunk{chunk}"] = STEP5 / seconds
    seconds = timed(lambda: confidence_map(clf, image, 1, step=5, engine="reference",
                                           pixels=[(31, 30)], show_progress=False))
    out["reference_passes_per_s"] = STEP5 / seconds
    best = max(v for k, v in out.items() if k.startswith("fast_passes"))
    out["paper_map_minutes_fast"] = PAPER_PASSES / best / 60
    out["paper_map_minutes_reference"] = PAPER_PASSES / out["reference_passes_per_s"] / 60
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--chunks", default="256,4096,16384", help="colours per cone-engine call")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (this benchmark times the engines on a GPU)")
    chunks = [int(c) for c in args.chunks.split(",")]
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              **{name: measure(name, chunks) for name in MODELS}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_engine.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

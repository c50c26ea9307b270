"""Does the report flatter a defence? The 3x3 median filter on PneumoniaMNIST, judged adaptively.

A median filter breaks gradients, so PGD through it (BPDA: identity on the backward pass) can
report robustness that a black-box attack does not find. This runs the CLI as a user would: a
one-pixel campaign on the benchmark's cached SmallCNN (its images are the ones a defence is judged
on), then ``medrobust defend --adaptive`` with PGD, Square and the AutoAttack-style ensemble at
Linf 2/255 and 8/255 and L2 0.5, and writes what the CLI concludes, gradient-masking warnings
included. Run from the project root:

    python benchmarks/gradient_masking.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import SHARED_DATA, cached_model, cli, git_commit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--images", type=int, default=64, help="test images attacked (one-pixel)")
    ap.add_argument("--square-queries", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gradient_masking")
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "gradient_masking")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    _, trained = cached_model("pneumoniamnist", args.data_dir, width=16)  # the benchmarks' model
    model = Path(trained["checkpoint"])
    db = str(args.work / "runs.db")
    start = time.perf_counter()
    cli("attack", "onepixel", "--model", str(model), "--limit", str(args.images),
        "--population", "100", "--generations", "10", "--store", db)
    out = cli("defend", "--model", str(model), "--store", db, "--denoiser", "median3",
              "--adaptive", "--adaptive-limit", str(args.images), "--linf", "2/255,8/255", "--l2", "0.5",
              "--pgd-steps", "20", "--square-queries", str(args.square_queries), "--attacks",
              "pgd-linf,pgd-l2,square-linf,square-l2,ensemble-linf,ensemble-l2")
    report = {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "model": str(model),
              "seconds": time.perf_counter() - start, "adaptive": out["adaptive"],
              "table": out["adaptive_table"], "warnings": out["warnings"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    cols, rows = out["adaptive_table"]["columns"], out["adaptive_table"]["rows"]
    md = [f"# Gradient masking check ({report['date']}, commit {report['commit']})", "",
          "`python benchmarks/gradient_masking.py --data-dir ../shared/data`", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [""] + [f"**Warning:** {w}" for w in out["warnings"]]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Strong attacks: medrobust's APGD, Square and AutoAttack-style ensemble vs torchattacks and ART.

The same SmallCNN (trained once through medrobust's API and cached under ``benchmarks/.cache/``,
shared with ``onepixel_vs_peers.py``) and the same correctly classified PneumoniaMNIST test
images (seeded, balanced over classes) are attacked at the same budget by

* ``apgd-ce``   medrobust ``APGD(loss="ce")``, ``torchattacks.APGD(loss="ce")``, ART's
                ``AutoProjectedGradientDescent(loss_type="cross_entropy")`` (initial step 2*eps,
                as in the paper and medrobust; ART's default would be its ``eps_step``);
* ``apgd-dlr``  the same with the DLR loss (PneumoniaMNIST has 2 classes: medrobust falls back
                to the margin loss and says so, the peers fail; the failure is recorded);
* ``square``    medrobust ``Square``, ``torchattacks.Square``, ART's ``SquareAttack``
                (p_init 0.8, the margin loss);
* ``ensemble``  medrobust ``AttackEnsemble`` (APGD-CE, APGD-T, Square), torchattacks
                ``MultiAttack`` of the same members, ART's ``AutoAttack`` with the same members.
                On a 2-class model the peers' APGD-T cannot run, so their ensembles drop it
                (noted in the output).

Every method is judged by this script, not by its library: the returned images are re-scored by
the model, and an image counts as fooled only if it is misclassified, in [0,1] and within eps
(float64 norm of the float32 change against the float32 radius); off-budget images are counted.
Forward rows (model evaluations) are counted by a forward pre-hook on the network. Methods run
in rotated order in each repeat (against load drift); seconds are medians over repeats.

Usage (from the project root)::

    .venv/bin/python benchmarks/strong_attacks.py --data-dir ../shared/data      # full
    .venv/bin/python benchmarks/strong_attacks.py --quick                        # < 1 minute

Writes ``strong_attacks.json`` and ``strong_attacks.md`` (``--quick``: ``strong_attacks_quick.*``)
under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DEFAULT_CACHE,
    SHARED_DATA,
    QueryCounter,
    cached_model,
    git_commit,
    load_average,
    machine_info,
    markdown_table,
    median,
    pick_correct,
    set_threads,
    write_json,
)

from medrobust.attacks import APGD, AttackEnsemble, Square
from medrobust.data import load_dataset
from medrobust.models.classifier import Classifier
from medrobust.utils.device import resolve_device

ATTACKS = ("apgd-ce", "apgd-dlr", "square", "ensemble")
LIBRARIES = ("medrobust", "torchattacks", "art")


# --- one (attack, library) run ------------------------------------------------------------------
def _members_note(k: int) -> str:
    return "APGD-CE, APGD-T, Square" if k >= 3 else "APGD-CE, Square (APGD-T needs 3 classes)"


def build(attack: str, library: str, clf: Classifier, args: argparse.Namespace, k: int,
          shape: tuple[int, int, int]) -> tuple[Any, str]:
    """The attack object and a one-line description of its configuration."""
    eps, norm, steps, queries, seed = args.eps_value, args.norm, args.steps, args.queries, args.seed
    if library == "medrobust":
        if attack == "apgd-ce":
            return APGD(clf, norm=norm, eps=eps, steps=steps, seed=seed), "APGD(loss=ce)"
        if attack == "apgd-dlr":
            return APGD(clf, norm=norm, eps=eps, steps=steps, loss="dlr", seed=seed), \
                "APGD(loss=dlr; margin on 2 classes)"
        if attack == "square":
            return Square(clf, norm=norm, eps=eps, max_queries=queries, seed=seed), \
                "Square(p_init=0.8)"
        return AttackEnsemble(clf, norm=norm, eps=eps, steps=steps, max_queries=queries,
                              n_target_classes=min(9, max(1, k - 1)), seed=seed), \
            "AttackEnsemble(APGD-CE, APGD-T, Square)"
    if library == "torchattacks":
        import torchattacks as ta

        tnorm = "Linf" if norm == "linf" else "L2"
        apgd_ce = ta.APGD(clf, norm=tnorm, eps=eps, steps=steps, n_restarts=1, loss="ce",
                          seed=seed)
        square = ta.Square(clf, norm=tnorm, eps=eps, n_queries=queries, n_restarts=1,
                           p_init=0.8, loss="margin", seed=seed)
        if attack == "apgd-ce":
            return apgd_ce, "APGD(loss=ce)"
        if attack == "apgd-dlr":
            return ta.APGD(clf, norm=tnorm, eps=eps, steps=steps, n_restarts=1, loss="dlr",
                           seed=seed), "APGD(loss=dlr)"
        if attack == "square":
            return square, "Square(p_init=0.8)"
        members = [apgd_ce] + ([ta.APGDT(clf, norm=tnorm, eps=eps, steps=steps, n_restarts=1,
                                         n_classes=k, seed=seed)] if k >= 3 else []) + [square]
        return ta.MultiAttack(members), f"MultiAttack({_members_note(k)})"
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack
    from art.estimators.classification import PyTorchClassifier

    c, h, w = shape
    est = PyTorchClassifier(model=clf, loss=nn.CrossEntropyLoss(), input_shape=(c, h, w),
                            nb_classes=k, clip_values=(0.0, 1.0), channels_first=True,
                            device_type="gpu" if clf.device.type == "cuda" else "cpu")
    anorm = np.inf if norm == "linf" else 2

    def apgd(loss: str) -> Any:
        return AutoProjectedGradientDescent(est, norm=anorm, eps=eps, eps_step=2 * eps,
                                            max_iter=steps, nb_random_init=1, loss_type=loss,
                                            batch_size=args.batch, verbose=False)

    def square() -> Any:
        return SquareAttack(est, norm=anorm, eps=eps, max_iter=queries, p_init=0.8,
                            nb_restarts=1, batch_size=args.batch, verbose=False)

    if attack == "apgd-ce":
        return apgd("cross_entropy"), "AutoProjectedGradientDescent(cross_entropy)"
    if attack == "apgd-dlr":
        return apgd("difference_logits_ratio"), \
            "AutoProjectedGradientDescent(difference_logits_ratio)"
    if attack == "square":
        return square(), "SquareAttack(p_init=0.8)"
    members = [apgd("cross_entropy")] + ([apgd("difference_logits_ratio")] if k >= 3 else []) \
        + [square()]
    note = "APGD-CE, APGD-DLR, Square" if k >= 3 else "APGD-CE, Square (DLR needs 3 classes)"
    return AutoAttack(est, norm=anorm, eps=eps, eps_step=2 * eps, attacks=members,
                      batch_size=args.batch), f"AutoAttack({note})"


def run_one(attack: str, library: str, clf: Classifier, x: torch.Tensor, y: torch.Tensor,
            keys: list[int], args: argparse.Namespace, counter: QueryCounter) -> dict[str, Any]:
    k = max(2, clf.num_classes)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # ART draws from NumPy's global generator
    out: dict[str, Any] = {"error": None, "claimed_success": None, "own_queries": None}
    start = time.perf_counter()
    try:
        obj, config = build(attack, library, clf, args, k, tuple(x.shape[1:]))
        out["config"] = config
        counter.reset()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if library == "medrobust":
                res = obj(x, y, keys=keys)
                adv = res.adversarial
                out["claimed_success"] = int(res.success.sum()) if res.success is not None \
                    else None
                if res.queries is not None:
                    out["own_queries"] = float(res.queries.float().mean())
                if attack == "ensemble":
                    out["robust_accuracy_by_member"] = res.robust_accuracy
                    out["seconds_by_member"] = {n: round(s, 3) for n, s in res.seconds.items()}
            elif library == "torchattacks":
                adv = obj(x, y)
            else:
                yo = np.eye(k, dtype=np.float32)[y.numpy()]
                adv = torch.from_numpy(obj.generate(x.numpy(), yo)).float()
        out["seconds"] = time.perf_counter() - start
        out["warnings"] = sorted({str(w.message)[:200] for w in caught
                                  if issubclass(w.category, UserWarning)})[:5]
        out["adv"] = adv.detach().cpu().float()
    except Exception as exc:  # a library failure is a result, reported as such
        out["seconds"] = time.perf_counter() - start
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        out["adv"] = None
        out.setdefault("config", "")
    rows, calls = counter.reset()
    out["forward_rows"], out["forward_calls"] = rows, calls
    return out


def judge(clf: Classifier, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, eps: float,
          norm: str) -> dict[str, Any]:
    """This script's verdict: fooled = misclassified and in [0,1] and within eps."""
    with torch.no_grad():
        pred = clf(adv).argmax(1) if clf.head == "softmax" else (clf(adv)[:, 0] > 0).long()
    wrong = pred != y
    d = (adv.double() - x.double()).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    radius = float(np.float32(eps))
    inside = (size <= radius) & (adv >= 0).flatten(1).all(1) & (adv <= 1).flatten(1).all(1)
    fooled = wrong & inside
    # peers clamp to x +- eps in float32, which can land a rounding outside: also report a
    # verdict that forgives one float32 step per pixel (2^-23; L2: times sqrt(pixels)), so the
    # strict column is not read as a weaker attack
    slack = 2.0 ** -23 * (1.0 if norm == "linf" else float(np.sqrt(d.shape[1])))
    near = (size <= radius + slack) & (adv >= 0).flatten(1).all(1) & \
        (adv <= 1).flatten(1).all(1)
    return {"robust_accuracy": float(1 - fooled.float().mean()),
            "robust_accuracy_tolerant": float(1 - (wrong & near).float().mean()),
            "fooled": int(fooled.sum()), "misclassified_off_budget": int((wrong & ~inside).sum()),
            "over_budget": int((~inside).sum()), "max_norm": float(size.max()),
            "max_excess": float((size - radius).max()), "fooled_mask": fooled.tolist()}


# --- the benchmark ------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> dict[str, Any]:
    device = str(resolve_device(args.device))
    clf, model_info = cached_model(args.dataset, args.data_dir, cache_dir=args.cache_dir,
                                   width=args.width, epochs=args.epochs, seed=0, device=device)
    clf.eval()
    test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    idx, sel = pick_correct(clf, test, args.images, args.seed)
    x = torch.from_numpy(test.images[idx]).permute(0, 3, 1, 2).float().div(255.0)
    y = torch.from_numpy(test.labels[idx]).long()
    keys = [int(i) for i in idx]
    print(f"[bench] {args.dataset}: test accuracy {model_info['test_accuracy']:.3f}; "
          f"{len(idx)} correctly classified images; {args.norm} eps {args.eps}", flush=True)
    pairs = [(a, lib) for a in args.attack_list for lib in args.library_list]
    counter = QueryCounter(clf.model).attach()
    # one untimed tiny run per method first: lazy imports and first-call set-up are not timed
    tiny = argparse.Namespace(**{**vars(args), "steps": 2, "queries": 3})
    for attack, lib in pairs:
        run_one(attack, lib, clf, x[:1], y[:1], keys[:1], tiny, counter)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {p: [] for p in pairs}
    for r in range(args.repeats):
        order = pairs[r % len(pairs):] + pairs[:r % len(pairs)]  # rotate against drift
        for attack, lib in order:
            load = load_average()
            res = run_one(attack, lib, clf, x, y, keys, args, counter)
            res["load_average_before"] = load
            runs[(attack, lib)].append(res)
            status = res["error"] or f"{res['seconds']:.2f}s"
            print(f"[bench] repeat {r + 1}/{args.repeats} {attack:9s} {lib:12s} {status}",
                  flush=True)
    counter.detach()

    results = []
    for attack, lib in pairs:
        rs = runs[(attack, lib)]
        first = rs[0]
        entry: dict[str, Any] = {"attack": attack, "library": lib, "config": first["config"],
                                 "error": first["error"], "images": len(idx)}
        if first["adv"] is not None:
            entry.update(judge(clf, x, y, first["adv"], args.eps_value, args.norm))
            entry["repeats_identical"] = all(
                r["adv"] is not None and torch.equal(r["adv"], first["adv"]) for r in rs[1:])
        secs = [r["seconds"] for r in rs if r["error"] is None]
        entry.update({
            "seconds": median(secs), "seconds_all_repeats": [round(s, 3) for s in secs],
            "forward_rows_per_image": first["forward_rows"] / max(1, len(idx)),
            "forward_calls": first["forward_calls"],
            "own_queries_per_image": first["own_queries"],
            "claimed_success": first["claimed_success"],
            "warnings": first.get("warnings", []),
        })
        for extra in ("robust_accuracy_by_member", "seconds_by_member"):
            if extra in first:
                entry[extra] = first[extra]
        results.append(entry)
    for e in results:  # speed relative to medrobust for the same attack
        ref = next((r["seconds"] for r in results if r["attack"] == e["attack"]
                    and r["library"] == "medrobust"), None)
        e["seconds_vs_medrobust"] = e["seconds"] / ref if ref and e["seconds"] else None
    return {"dataset": args.dataset, "classes": list(test.class_names),
            "image_shape": list(x.shape[1:]), "model": model_info,
            "selection": {**sel, "indices": keys, "labels": y.tolist()}, "results": results}


def markdown(report: dict[str, Any]) -> str:
    a = report["args"]
    d = report["data"]
    rows = [[e["attack"], e["library"], e["config"],
             None if e.get("robust_accuracy") is None else f"{e['robust_accuracy']:.3f}",
             None if e.get("robust_accuracy") is None
             else f"{e['robust_accuracy_tolerant']:.3f}",
             e.get("misclassified_off_budget"),
             None if e.get("max_excess") is None else f"{max(0.0, e['max_excess']):.1e}",
             e["seconds"],
             None if e["seconds_vs_medrobust"] is None else f"{e['seconds_vs_medrobust']:.2f}x",
             round(e["forward_rows_per_image"], 1), e["error"] or ""]
            for e in d["results"]]
    lines = [
        "# Strong attacks: medrobust vs torchattacks vs IBM ART",
        "",
        f"Generated by `benchmarks/strong_attacks.py` on {report['finished_at']} at commit "
        f"{report['commit']}. Command: `{report['command']}`",
        "",
        f"{d['dataset']} ({', '.join(d['classes'])}), {d['model']['model']} "
        f"{d['model']['model_kwargs']} (test accuracy {d['model']['test_accuracy']:.3f}); "
        f"{len(d['selection']['indices'])} correctly classified test images; {a['norm']} eps "
        f"{a['eps']}; APGD {a['steps']} steps, 1 restart; Square {a['queries']} queries; "
        f"seed {a['seed']}; {a['repeats']} repeat(s).",
        "",
        markdown_table(["attack", "library", "configuration", "robust accuracy",
                        "(rounding forgiven)", "fooled off budget", "max excess",
                        "seconds (median)", "time vs medrobust",
                        "forward rows / image", "error"], rows),
        "",
        "* robust accuracy: judged by this script on the returned images (fooled = "
        "misclassified, in [0,1] and within eps in float64); lower is a stronger attack.",
        "* (rounding forgiven): the same verdict forgiving one float32 step (2^-23) per pixel "
        "over eps (L2: times the square root of the pixel count). "
        "fooled off budget: misclassified images outside the eps ball or the box (fooled only "
        "under the tolerance if within it); max excess: the largest norm minus eps.",
        "* seconds: median over repeats, after one untimed tiny warm-up run of every method; "
        "time vs medrobust: the method's seconds over medrobust's for the same attack (above "
        "1: medrobust is faster).",
        "* forward rows / image: model evaluations counted by a forward hook (gradient passes "
        "included), divided by the number of images.",
        "",
        "## Machine",
        "",
        f"{report['machine']['cpu']}, {report['machine']['logical_cores']} logical cores, torch "
        f"threads {report['machine']['torch_threads']}, load at start "
        f"{report['machine'].get('load_average_at_start')}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["machine"]["versions"].items()) + ".",
    ]
    if report.get("notes"):
        lines += ["", "## Notes", "", *[f"* {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help=f"comma-separated subset of {', '.join(ATTACKS)}")
    p.add_argument("--libraries", default=",".join(LIBRARIES),
                   help=f"comma-separated subset of {', '.join(LIBRARIES)}")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--eps", default="2/255", help="radius; 'a/b' or a number")
    p.add_argument("--images", type=int, default=100, help="correctly classified test images")
    p.add_argument("--steps", type=int, default=100, help="APGD iterations (AutoAttack: 100)")
    p.add_argument("--queries", type=int, default=5000, help="Square queries (AutoAttack: 5000)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=128, help="ART's batch size")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--quick", action="store_true",
                   help="smoke test in under a minute: 4 images, APGD 10 steps, Square 30 "
                        "queries, 2 repeats, apgd-ce/square/ensemble; writes *_quick.*")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.queries, args.repeats = 4, 10, 30, 2
        if args.attacks == ",".join(ATTACKS):
            args.attacks = "apgd-ce,square,ensemble"
    num, _, den = args.eps.partition("/")
    args.eps_value = float(num) / float(den) if den else float(num)
    args.attack_list = [a.strip() for a in args.attacks.split(",") if a.strip()]
    args.library_list = [lib.strip() for lib in args.libraries.split(",") if lib.strip()]
    bad = [a for a in args.attack_list if a not in ATTACKS] + \
        [lib for lib in args.library_list if lib not in LIBRARIES]
    if bad:
        p.error(f"unknown attack(s)/library(ies): {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    notes = []
    for lib, module in (("torchattacks", "torchattacks"), ("art", "art")):
        if lib in args.library_list:
            try:
                __import__(module)
            except ImportError as exc:
                args.library_list.remove(lib)
                notes.append(f"{lib} skipped: not installed ({exc})")
    report: dict[str, Any] = {
        "benchmark": "strong_attacks",
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "args": {k: v for k, v in vars(args).items()},
        "machine": machine_info(str(resolve_device(args.device)),
                                ("torchattacks", "adversarial-robustness-toolbox")),
        "notes": [
            *notes,
            "Square queries: medrobust counts the clean check as a query (max_queries in all); "
            "torchattacks' n_queries and ART's max_iter count iterations after it, so the peers "
            "may evaluate an image once or twice more (see forward rows).",
            "On a 2-class model DLR and APGD-T are undefined: medrobust replaces them by the "
            "margin loss with a warning; the peers' DLR fails and their ensembles leave APGD-T "
            "(torchattacks) or APGD-DLR (ART) out.",
            "ART's APGD is given eps_step = 2 * eps, the paper's initial step (its own default "
            "is a fixed 0.1). ART's AutoAttack imports the `multiprocess` package; without it "
            "that row records the error.",
        ],
    }
    report["data"] = bench(args)
    report["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    stem = "strong_attacks_quick" if args.quick else "strong_attacks"
    out = Path(args.out)
    write_json(out / f"{stem}.json", report)
    text = markdown(report)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

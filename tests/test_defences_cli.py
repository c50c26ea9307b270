"""``medrobust train-denoiser`` and ``medrobust defend`` end to end, plus the report section."""

from __future__ import annotations

import pytest
from cli_util import run_json

from medrobust.attacks import OnePixel
from medrobust.campaigns.onepixel import run_onepixel_campaign
from medrobust.cli.main import main
from medrobust.models.checkpoint import save_checkpoint
from medrobust.store import Store

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def attacked_store(tmp_path_factory, tiny_classifier, tiny_synthetic):
    """A checkpoint and a store holding a small one-pixel run against it (shared by the tests
    of this module; only the first one writes to it)."""
    tmp_path = tmp_path_factory.mktemp("defend")
    ckpt = tmp_path / "model"
    _, _, test = tiny_synthetic
    save_checkpoint(tiny_classifier, ckpt, {"model": "smallcnn", "model_kwargs": {"width": 8},
                                            "dataset": test.spec})
    db = tmp_path / "s.db"
    attack = OnePixel(tiny_classifier, population=30, generations=4, seed=0)
    with Store(db) as store:
        run_onepixel_campaign(store, tiny_classifier, ckpt, test, attack, list(range(8)),
                              show_progress=False)
    return ckpt, db


def test_train_denoiser_then_defend_with_adaptive_and_report(tmp_path, capsys, attacked_store):
    ckpt, db = attacked_store
    trained = run_json(capsys, "train-denoiser", "--dataset", "synthetic", "--size", "16",
                       "--epochs", "1", "--max-train", "64", "--width", "4",
                       "--out", str(tmp_path / "dae"), "--store", str(db))
    assert (tmp_path / "dae" / "model.safetensors").is_file()
    assert 0 <= trained["val"]["mask_recall"] <= 1
    out = run_json(capsys, "defend", "--model", str(ckpt), "--store", str(db),
                   "--denoiser", f"{tmp_path / 'dae'},median3", "--clean-limit", "40",
                   "--adaptive", "--adaptive-limit", "3", "--linf", "8/255", "--l2", "1",
                   "--pgd-steps", "2", "--onepixel-population", "8",
                   "--onepixel-generations", "1", "--out", str(tmp_path / "grid"))
    names = [d["label"] for d in out["defences"]]
    assert names == ["autoencoder (dae)", "median3"]
    for d in out["defences"]:
        assert d["clean_images"] == 40 and d["attacked"] >= 1
        assert 0 <= d["clean_accuracy_defended"] <= 1
    assert [a["label"] for a in out["adaptive"]] == ["none", "autoencoder (dae)", "median3"]
    key = f"{8 / 255:.6g}"
    for a in out["adaptive"]:
        assert a["images"] <= 3 and set(a["pgd-linf"]) == {key}
        assert 0 <= a["pgd-l2"]["1"] <= 1 and 0 <= a["onepixel"] <= 1
        # an image survives the ensemble only if it survives each member: PGD and Square
        # (same seed and keys inside and alone) can only bound it from above
        for norm, eps in (("linf", key), ("l2", "1")):
            ens = a[f"ensemble-{norm}"][eps]
            assert ens <= a[f"pgd-{norm}"][eps] and ens <= a[f"square-{norm}"][eps]
            n = a["n"][f"ensemble-{norm}"][eps]
            lo, hi = a["ci95"][f"ensemble-{norm}"][eps]
            assert n == a["images"] and lo <= ens <= hi
    assert len(out["table"]["rows"]) == 2 and len(out["quality_table"]["rows"]) == 2
    # one row per defence, attack and budget: clean, one-pixel, then 3 families x 2 norms
    assert len(out["adaptive_table"]["rows"]) == 3 * (2 + 6)
    if out["grid"]:  # only drawn when some attack succeeded
        assert (tmp_path / "grid" / "defence_grid.png").is_file()

    code = main(["report", "--store", str(db), "--out", str(tmp_path / "rep")])
    capsys.readouterr()
    assert code == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Denoising defences" in html and "Robust accuracy under attacks that see" in html


@pytest.mark.parametrize("args,needle", [
    (("--denoiser", "gaussian-blur"), "unknown denoiser"),
    (("--denoiser", "median3", "--linf", "a,b", "--adaptive"), "is not a number or fraction"),
    (("--denoiser", "median3", "--run", "999"), "no run with id 999"),
])
def test_defend_errors_are_one_line(capsys, attacked_store, args, needle):
    ckpt, db = attacked_store
    code = main(["defend", "--model", str(ckpt), "--store", str(db), *args])
    _, err = capsys.readouterr()
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1

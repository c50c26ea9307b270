"""``--classes``: train and attack on chosen classes of a dataset, in the order given."""

from __future__ import annotations

import json

import pytest
from cli_util import run_cli, run_json

from medrobust.data import load_dataset


@pytest.mark.realdata
def test_classes_train_a_binary_model_in_the_given_order(shared_data, tmp_path, capsys,
                                                         one_thread):
    data = str(shared_data)
    full = load_dataset("bccd", "test", data_dir=data, size=16)
    out = run_json(capsys, "train", "--dataset", "bccd", "--data-dir", data, "--size", "16",
                   "--classes", "WBC,RBC", "--epochs", "1", "--width", "4",
                   "--out", str(tmp_path / "m"), "--store", str(tmp_path / "s.db"))
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["class_names"] == ["WBC", "RBC"] and meta["dataset"]["classes"] == ["WBC", "RBC"]
    assert out["test"]["n"] == sum(int((full.labels == full.class_names.index(c)).sum())
                                   for c in ("WBC", "RBC"))
    # the attack opens the model's own classes, given --dataset or not
    for extra in ([], ["--dataset", "bccd", "--data-dir", data, "--size", "16"]):
        res = run_json(capsys, "attack", "pgd", "--model", str(tmp_path / "m"), "--limit", "4",
                       "--steps", "1", "--store", str(tmp_path / "s.db"), *extra)
        assert res["images"] == 4
    wbc = load_dataset("bccd", "test", data_dir=data, size=16, classes=("WBC", "RBC"))
    assert set(wbc.labels.tolist()) == {0, 1} and wbc.class_names == ("WBC", "RBC")
    assert int((wbc.labels == 0).sum()) == int((full.labels == full.class_names.index("WBC")).sum())


def test_classes_on_a_dataset_without_classes_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--size", "16",
                           "--classes", "a,b", "--epochs", "1", "--out", str(tmp_path / "m"),
                           "--store", str(tmp_path / "s.db"))
    assert code == 2 and "--classes applies to" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--classes", "a,a",
                           "--out", str(tmp_path / "m"), "--store", str(tmp_path / "s.db"))
    assert code == 2 and "distinct" in err


def test_demo_trains_on_the_classes_it_attacks():
    """demo --classes: the classifier is trained on the classes its test split is attacked on
    (it used to train on all of the dataset's classes and be attacked on relabelled data)."""
    from medrobust.campaigns.demo import DemoRequest
    from medrobust.campaigns.train import DataRequest

    request = DemoRequest(data=DataRequest(name="bccd", classes=("WBC", "RBC")))
    assert request.train_request().data.classes == ("WBC", "RBC")
    assert DemoRequest(data=DataRequest()).train_request().data.name == "synthetic"

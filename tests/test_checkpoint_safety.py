"""Loading a checkpoint never runs code named in it unless the user asks (issue 11, part 8)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from cli_util import run_cli

from medrobust.errors import CheckpointError
from medrobust.models import Classifier, build_model, load_classifier, save_checkpoint

REFUSAL = ("error: checkpoint names model 'this:nope', which is not in the zoo; pass "
           "--trust-model-code to load user code you trust")


def _checkpoint(path: Path, model_name: str = "smallcnn", **kwargs) -> Path:
    """An untrained 3-channel smallcnn saved as a checkpoint that names ``model_name``."""
    net = build_model("smallcnn", 3, 2, width=4)
    clf = Classifier(net, mean=[0.5] * 3, std=[0.25] * 3, class_names=("normal", "mitosis"))
    return save_checkpoint(clf, path, {"model": model_name, "model_kwargs": kwargs or {"width": 4},
                                       "dataset": {"dataset": "synthetic", "size": 16, "n": 8}})


def _user_module(tmp_path: Path, monkeypatch, name: str) -> str:
    """An importable module ``name`` whose ``factory`` builds the smallcnn above; importing it
    leaves a mark in ``sys.modules`` only (it prints nothing)."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        from medrobust.models.smallcnn import SmallCNN

        def factory(in_channels, num_classes):
            return SmallCNN(in_channels=in_channels, num_classes=num_classes, width=4)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return f"{name}:factory"


def test_meta_naming_this_nope_is_refused_without_importing_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "this", raising=False)
    ckpt = _checkpoint(tmp_path / "m", "this:nope")
    code, out, err = run_cli(capsys, "evaluate", "--model", str(ckpt), "--store",
                             str(tmp_path / "s.db"))
    assert code == 2 and err.strip() == REFUSAL
    assert "this" not in sys.modules and "Zen of Python" not in out + err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("command", [("evaluate",), ("attack", "onepixel"), ("attack", "pgd"),
                                     ("map", "--out", "maps")])
def test_every_model_command_refuses_user_code_from_a_file(tmp_path, capsys, monkeypatch,
                                                           command):
    monkeypatch.delitem(sys.modules, "this", raising=False)
    ckpt = _checkpoint(tmp_path / "m", "this:nope")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *command, "--model", str(ckpt), "--store",
                             str(tmp_path / "s.db"))
    assert code == 2 and err.strip() == REFUSAL
    assert "this" not in sys.modules and "Zen of Python" not in out


def test_user_model_loads_only_when_the_user_says_so(tmp_path, monkeypatch):
    name = _user_module(tmp_path, monkeypatch, "medrobust_test_usernet_api")
    module = name.split(":")[0]
    ckpt = _checkpoint(tmp_path / "m", name, **{})
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["model_kwargs"] = {}
    (ckpt / "meta.json").write_text(json.dumps(meta))

    with pytest.raises(CheckpointError, match="not in the zoo"):
        load_classifier(ckpt)
    assert module not in sys.modules
    assert load_classifier(ckpt, trust_model_code=True).channels == 3
    monkeypatch.delitem(sys.modules, module)
    # trusting one load does not trust the name for the next
    with pytest.raises(CheckpointError, match="not in the zoo"):
        load_classifier(ckpt)
    assert load_classifier(ckpt, model_factory=name).num_classes == 2


def test_cli_trust_model_code_flag_loads_the_user_model(tmp_path, capsys, monkeypatch):
    name = _user_module(tmp_path, monkeypatch, "medrobust_test_usernet_cli")
    ckpt = _checkpoint(tmp_path / "m", name)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["model_kwargs"] = {}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    args = ("evaluate", "--model", str(ckpt), "--store", str(tmp_path / "s.db"), "--json")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "not in the zoo" in err
    assert name.split(":")[0] not in sys.modules
    code, out, err = run_cli(capsys, *args, "--trust-model-code")
    assert code == 0, err
    assert json.loads(out)["n"] == 8
    # the flag held for that command only
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "not in the zoo" in err


def test_a_factory_the_user_named_loads_its_own_checkpoint(tmp_path, monkeypatch):
    """``train --model mod:factory`` (or ``demo``) reloads what it saved without a flag."""
    name = _user_module(tmp_path, monkeypatch, "medrobust_test_usernet_named")
    ckpt = _checkpoint(tmp_path / "m", name)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["model_kwargs"] = {}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not in the zoo"):
        load_classifier(ckpt)
    build_model(name, 3, 2)  # what training does with the user's --model
    assert load_classifier(ckpt).channels == 3


def test_segmenter_meta_multiple_is_checked(tmp_path):
    from medrobust.models.segmenter import load_segmenter

    ckpt = _checkpoint(tmp_path / "m")
    meta = json.loads((ckpt / "meta.json").read_text())
    meta.update(task="segmentation", multiple="eight")
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'multiple' must be a positive integer"):
        load_segmenter(ckpt)


def test_segmenter_checkpoints_refuse_user_code_too(tmp_path, monkeypatch):
    from medrobust.models.segmenter import load_segmenter

    monkeypatch.delitem(sys.modules, "this", raising=False)
    ckpt = _checkpoint(tmp_path / "m", "this:nope")
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["task"] = "segmentation"
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not in the zoo"):
        load_segmenter(ckpt)
    assert "this" not in sys.modules


def test_zoo_checkpoints_load_as_before(tmp_path):
    clf = load_classifier(_checkpoint(tmp_path / "m"))
    assert clf.channels == 3 and clf.class_names == ("normal", "mitosis")

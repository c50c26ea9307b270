"""The CLI end to end with ``--json``, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_util import run_cli, run_json


@pytest.mark.slow
def test_train_evaluate_attack_export_chain(tmp_path, capsys):
    db = str(tmp_path / "s.db")
    ckpt = str(tmp_path / "model")
    trained = run_json(capsys, "train", "--dataset", "synthetic", "--size", "16", "--epochs", "1",
                       "--width", "8", "--out", ckpt, "--store", db)
    assert trained["test"]["n"] == 400 and 0 <= trained["test"]["accuracy"] <= 1
    assert (tmp_path / "model" / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    assert meta["dataset"]["dataset"] == "synthetic" and meta["class_names"] == ["normal", "mitosis"]
    assert "torch" in meta["versions"] and meta["model_kwargs"] == {"width": 8}

    ev = run_json(capsys, "evaluate", "--model", ckpt, "--store", db)
    assert ev["accuracy"] == pytest.approx(trained["test"]["accuracy"])
    assert len(ev["confusion_matrix"]) == 2

    args = ("attack", "onepixel", "--model", ckpt, "--limit", "4", "--population", "16",
            "--generations", "2", "--store", db)
    first = run_json(capsys, *args)
    assert first["images"] == 4 and not first["resumed"]
    again = run_json(capsys, *args)
    assert again["resumed"] and again["attacked_now"] == 0 and again["run_id"] == first["run_id"]

    out_csv = tmp_path / "op.csv"
    run_json(capsys, "store", "export", "--store", db, "--table", "onepixel_results",
             "--out", str(out_csv))
    assert len(out_csv.read_text().strip().splitlines()) == 1 + 4
    runs = run_json(capsys, "store", "runs", "--store", db)
    assert [r["command"] for r in runs["runs"]] == ["train", "evaluate", "attack onepixel"]

    maps = run_json(capsys, "map", "--model", ckpt, "--index", "1", "--step", "128",
                    "--out", str(tmp_path / "maps"), "--store", db)
    row = maps["maps"][0]
    assert row["dataset_index"] == 1 and row["passes"] == 16 * 16 * 27
    assert (tmp_path / "maps" / "map_1.npz").is_file() and (tmp_path / "maps" / "map_1.png").is_file()
    assert row["min_score"] <= row["clean_score"] <= row["max_score"]

    report = run_json(capsys, "report", "--store", db, "--out", str(tmp_path / "rep"))
    html = (tmp_path / "rep" / "report.html").read_text()
    assert report["report"].endswith("report.html") and "One-pixel confidence maps" in html


@pytest.mark.parametrize("args,needle", [
    (("train", "--dataset", "nosuch", "--out", "x"), "unknown dataset"),
    (("evaluate", "--model", "/nonexistent/model"), "not a medrobust checkpoint"),
    (("store", "runs", "--store", "/nonexistent/s.db"), "no store"),
])
def test_bad_input_gives_one_line(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "medrobust.cli.main", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("train", "evaluate", "attack", "analyze", "report", "demo"):
        assert command in proc.stdout


def test_width_is_refused_for_models_without_one(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--model", "resnet18",
                           "--width", "8", "--out", str(tmp_path / "m"))
    assert code == 2 and err.strip() == "error: --width applies to smallcnn and mitosisnet, not resnet18"


def test_lazy_command_table_matches_the_commands():
    """``medrobust --help`` lists commands without importing them; its lines must be theirs."""
    import click

    from medrobust.cli.main import COMMANDS, cli, load_command

    for name, (_, _, short) in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert short == command.get_short_help_str(limit=500), name
    attack = cli.get_command(click.Context(cli), "attack")
    assert {"onepixel", "pgd", "ifgsm", "asma"} <= set(attack.commands)

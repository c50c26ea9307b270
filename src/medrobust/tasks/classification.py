"""Image classification: cross-entropy (or BCE for one-logit detectors), accuracy and AUC."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.attacks.criteria import hits_target, misclassified
from medrobust.certify import classification as certificates
from medrobust.errors import ConfigError
from medrobust.metrics.proportion import proportion
from medrobust.models.classifier import Classifier
from medrobust.models.registry import build_model
from medrobust.tasks.base import (
    AttackGoals,
    Certification,
    CurveMetric,
    Task,
    TaskReport,
    config_meta,
    fmt_value,
)
from medrobust.tasks.robust import (
    split,
    trained_about,
    trainer_kwargs,
    with_robust,
)
from medrobust.training.evaluate import evaluate_classifier
from medrobust.training.trainer import TrainConfig, train_classifier

OPTIONS: dict[str, Any] = with_robust({"model": "smallcnn", "model_kwargs": {}, "epochs": 15,
                                       "batch_size": 128, "lr": 3e-3, "weight_decay": 5e-4,
                                       "augment": "auto", "noise_sd": 0.0, "seed": 0})
#: zoo models whose first stage's width can be chosen (``--width``)
WIDTH_MODELS = ("smallcnn", "mitosisnet")


def train(train_ds: Any, val_ds: Any, options: dict[str, Any], device: str
          ) -> tuple[Classifier, dict[str, Any]]:
    own, robust = split(options)
    kwargs = trainer_kwargs(robust, "classification")
    result = train_classifier(train_ds, val_ds, TrainConfig(**own), device, **kwargs)
    about = trained_about(kwargs, robust, result.history, train_ds)
    return result.classifier, {"best_epoch": result.best_epoch, "val": result.val_metrics,
                               "epochs_run": len(result.history),
                               "train_seconds": result.seconds, "history": result.history,
                               "model_kwargs": own["model_kwargs"], "robust": about}


def command_options(given: dict[str, Any], start: dict[str, Any] | None) -> dict[str, Any]:
    """``--width``/``--padding`` into the zoo model's keyword arguments; with ``--xi-from`` and
    no architecture chosen, the network that checkpoint holds (fine-tuning starts from it)."""
    out = dict(given)
    arch = {k: out.pop(k) for k in ("padding", "width") if k in out}
    if start is not None and "model" not in out and not arch:
        out["model"] = str(start.get("model", OPTIONS["model"]))
        out["model_kwargs"] = dict(start.get("model_kwargs") or {})
    model = out.get("model", OPTIONS["model"])
    if "width" in arch and model not in WIDTH_MODELS:
        raise ConfigError(f"--width applies to {' and '.join(WIDTH_MODELS)}, not {model}")
    if arch:
        out["model_kwargs"] = {**(out.get("model_kwargs") or {}), **arch}
    return out


def validate_options(own: dict[str, Any]) -> None:
    TrainConfig(**own).validate()


def checkpoint_meta(trained: dict[str, Any], train_ds: Any, options: dict[str, Any],
                    test: dict[str, Any]) -> dict[str, Any]:
    return config_meta(TrainConfig(**split(options)[0]), trained, train_ds, test)


def network(train_ds: Any, val_ds: Any, o: dict[str, Any]) -> torch.nn.Module:
    """The network ``train_classifier`` builds for these options."""
    return build_model(o["model"], train_ds.channels, train_ds.num_classes,
                       **(o["model_kwargs"] or {}))


def loss_terms(model: Classifier, outputs: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """Per-sample cross-entropy (one-logit sigmoid heads: binary cross-entropy); ``total`` is
    the training objective."""
    if model.head == "sigmoid":
        ce = F.binary_cross_entropy_with_logits(outputs.reshape(-1), labels.float(),
                                                reduction="none")
    else:
        ce = F.cross_entropy(outputs, labels, reduction="none")
    return {"ce": ce, "total": ce}


def attack_targets(ds: Any, idx: np.ndarray) -> torch.Tensor:
    """The true labels: an untargeted attack pushes predictions away from them."""
    return torch.from_numpy(np.asarray(ds.labels)[idx].astype(np.int64))


def attack_rows(model: Classifier, ds: Any, idx: np.ndarray, clean: torch.Tensor,
                adv: torch.Tensor) -> list[dict[str, Any]]:
    """Per image: correct before and after (the accuracy terms) and the true class's
    probability before and after, with both predicted classes."""
    labels = np.asarray(ds.labels)[idx]
    p_clean, p_adv = model.probabilities(clean), model.probabilities(adv)
    rows = []
    for j, label in enumerate(int(v) for v in labels):
        c, a = int(p_clean[j].argmax()), int(p_adv[j].argmax())
        rows.append({"metric": "accuracy", "unit": "", "clean_metric": float(c == label),
                     "adv_metric": float(a == label), "clean_extra": float(p_clean[j][label]),
                     "adv_extra": float(p_adv[j][label]), "clean_pred": c, "adv_pred": a})
    return rows


def resolve_targets(spec: str, ds: Any, indices: list[int]) -> dict[int, int]:
    """``--target``: a class name, a class index, or ``next`` (label + 1 mod K); images already
    of the target class are left out (there is nothing to attack)."""
    names = list(ds.class_names)
    if spec == "next":
        return {i: (int(ds.labels[i]) + 1) % len(names) for i in indices}
    if spec in names:
        t = names.index(spec)
    elif spec.isdigit() and int(spec) < len(names):
        t = int(spec)
    else:
        raise ConfigError(f"--target {spec!r} is not a class of {ds.name}: {', '.join(names)}")
    return {i: t for i in indices if int(ds.labels[i]) != t}


def attack_success(row: Any, target: Any) -> bool:
    """Targeted: the prediction is the target; untargeted: it is no longer the label."""
    return row["adv_pred"] == target if target is not None else row["adv_metric"] == 0.0


GOALS = AttackGoals(
    choose=resolve_targets,
    goal=lambda targets: torch.tensor([int(t) for t in targets], dtype=torch.int64),
    early_stop=lambda targeted: hits_target if targeted else misclassified,
    success=attack_success)


def attack_summary(rows: list[dict[str, Any]], ds: Any) -> dict[str, Any]:
    """Clean and robust accuracy with 95 % Wilson intervals, and the success rate among the
    images the model got right (the ones an attack can fool; targeted: reach the target)."""
    right = [r for r in rows if r["clean_metric"] == 1.0]
    clean = proportion(int(sum(r["clean_metric"] for r in rows)), len(rows))
    robust = proportion(int(sum(r["adv_metric"] for r in rows)), len(rows))
    # rows from before success was recorded are untargeted: success = fooled
    fooled = proportion(sum(bool(r["success"]) if r.get("success") is not None
                            else r["adv_metric"] == 0.0 for r in right), len(right))
    return {"images": len(rows), "clean_accuracy": clean.rate, "adv_accuracy": robust.rate,
            "adv_accuracy_ci95": robust.ci95, "clean_accuracy_ci95": clean.ci95,
            "attacked": len(right), "success_rate": fooled.rate}


def describe(m: dict[str, Any]) -> str:
    """Accuracy, AUC and balanced accuracy, then recall per class and the confusion matrix."""
    recall = ", ".join(f"{name} {fmt_value(r)}" for name, r in (m.get("recall") or {}).items())
    return (f"n={m['n']} accuracy {fmt_value(m['accuracy'])} AUC {fmt_value(m.get('auc'))} balanced "
            f"{fmt_value(m.get('balanced_accuracy'))}; recall {recall}; confusion matrix (rows = truth) "
            f"{m.get('confusion_matrix')}")


def describe_attack(s: dict[str, Any]) -> str:
    return (f"accuracy {fmt_value(s.get('clean_accuracy'))} -> {fmt_value(s.get('adv_accuracy'))}  success "
            f"rate {fmt_value(s.get('success_rate'))} of {s.get('attacked')} correct images")


TASK = Task(name="classification", wrapper=Classifier,
            datasets=("synthetic", "medmnist", "bccd", "folder"), train=train,
            evaluate=evaluate_classifier, headline="accuracy", loss_terms=loss_terms,
            default_model="smallcnn", options=OPTIONS, attack_rows=attack_rows,
            attack_summary=attack_summary, attack_targets=attack_targets, class_logits=True,
            describe=describe, describe_attack=describe_attack, network=network,
            command_options=command_options, validate_options=validate_options,
            checkpoint_meta=checkpoint_meta, goals=GOALS,
            certification=Certification(
                "randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019)",
                certificates.TABLE, certificates.certifier, certificates.summarise,
                certificates.describe, radii_free=True, checkable=True),
            report=TaskReport(
                0, "Classification: accuracy", "accuracy",
                (CurveMetric("accuracy", "accuracy", (("clean_accuracy", "adv_accuracy"),
                                                      ("clean_accuracy", "robust_accuracy")),
                             percent=True),),
                proportion=True, panel="gallery"))

"""Scores of classifiers, in one place: Charades' average precision and mAP beside the
single-label figures papers report for UCF101, HMDB51 and Kinetics (top-k accuracy, mean class
accuracy, the confusion matrix). Plain numpy on (N, C) scores; no model, no files."""
from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: sum over score thresholds of (recall gain) * precision, i.e. the mean
    over positives of the precision at the positive's rank. Items with equal scores form one
    threshold (all counted together), so the result does not depend on the order of ties
    (this equals scikit-learn's average_precision_score; without ties it equals the official
    Charades per-positive loop). NaN when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(labels).reshape(-1) > 0
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], np.cumsum(positive[order])
    # Last index of each block of tied scores: where the precision is evaluated.
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp_at = tp[last]
    precision = tp_at / (last + 1)
    gain = np.diff(np.r_[0, tp_at]) / n_pos
    return float(np.sum(gain * precision))


def average_precisions(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class AP of (N, C) scores and (N, C) 0/1 labels: (C,), NaN for classes without
    a positive."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, C)")
    return np.array([average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])])


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP of (N, C) scores against (N, C) 0/1 labels over the classes with at least one
    positive (NaN if none has, or if a score is NaN: a diverged model must not look fine)."""
    if np.isnan(np.asarray(scores, dtype=np.float64)).any():
        return float("nan")
    aps = average_precisions(scores, labels)
    aps = aps[~np.isnan(aps)]
    return float(aps.mean()) if len(aps) else float("nan")


def top_k_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: whether item n's true class (labels (N,) ints) is among its k best scores
    (ties broken towards the lower class index, as a stable sort does)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (order == np.asarray(labels)[:, None]).any(axis=1)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """The fraction of items whose true class is among their k best scores."""
    return float(top_k_correct(scores, labels, k).mean()) if len(labels) else float("nan")


def class_accuracies(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) top-1 accuracy of each class's items (NaN for a class without items)."""
    correct = top_k_correct(scores, labels, 1)
    labels = np.asarray(labels)
    count = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, hits / np.maximum(count, 1), np.nan)


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """The mean over the classes that have items of their top-1 accuracy (mmaction2's
    mean_class_accuracy)."""
    acc = class_accuracies(scores, labels, num_classes)
    acc = acc[~np.isnan(acc)]
    return float(acc.mean()) if len(acc) else float("nan")


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted (top-1) class."""
    pred = np.argmax(np.asarray(scores), axis=1)
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels), pred), 1)
    return out

"""Tasks: the bundled scikit-learn digits as a sequence classification task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Task", "load_task", "TASKS"]

TASKS = ("digits",)


@dataclass(frozen=True)
class Task:
    """A sequence-classification task. Inputs are float32 [T, N, I] in [0, 1]."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_size(self) -> int:
        return self.x_train.shape[2]

    @property
    def steps(self) -> int:
        return self.x_train.shape[0]


def _digits(seed: int) -> Task:
    from sklearn.datasets import load_digits
    digits = load_digits()
    # Each 8x8 image is read row by row: 8 steps of 8 pixels, scaled from 0..16 to [0, 1].
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_train = int(round(0.75 * len(labels)))
    train, test = order[:n_train], order[n_train:]
    to_seq = lambda a: np.ascontiguousarray(a.transpose(1, 0, 2))  # [N, T, I] -> [T, N, I]
    return Task("digits", to_seq(images[train]), labels[train], to_seq(images[test]), labels[test], 10)


def load_task(name: str, *, split_seed: int = 0) -> Task:
    """Load a task by name. The split is fixed by ``split_seed`` (75/25 train/test)."""
    if name == "digits":
        return _digits(split_seed)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")

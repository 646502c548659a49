"""Train, prune and quantize an EGRU on a task; evaluate the result with the golden model.

Three phases over ``epochs`` in total: dense float training (half), gradual magnitude
pruning with fine-tuning (three tenths; the sparsity ramp ends two thirds into the
phase and the masks are then held), and quantization-aware fine-tuning (the rest).
The activity penalty (mean event rate times ``activity_reg``) applies in the last two
phases, where it trades a little accuracy for fewer events.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TF

from . import golden
from .data import load_task
from .egru import EGRUNet
from .formats import NumberFormats
from .lanes import check_lanes
from .model import QuantModel
from .prune import PruningSchedule, check_sparsity, check_structure
from .qat import choose_input_frac, export

__all__ = ["TrainConfig", "train", "evaluate_quant", "evaluate_float"]


@dataclass
class TrainConfig:
    """Options of ``egru-accel train`` (see ``--help``)."""
    task: str = "digits"
    hidden: int = 128
    layers: int = 1
    epochs: int = 300
    weight_sparsity: float = 0.9
    lanes: int | None = 8
    structure: str = "unstructured"
    weight_bits: int = 8
    seed: int = 0
    batch_size: int = 32
    lr: float = 3e-3
    activity_reg: float = 0.4
    dense_activity_reg: float = 0.0
    distill: float = 1.0
    readout_sparsity: float = 0.2
    thr_mean: float = 0.3

    def validate(self):
        for name in ("hidden", "layers", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.epochs < 3:
            raise ValueError(f"epochs must be at least 3 (one per phase), got {self.epochs}")
        check_sparsity(self.weight_sparsity)
        if self.lanes is not None:
            check_lanes(self.lanes, self.hidden)
        check_structure(self.structure, self.lanes)
        if not isinstance(self.weight_bits, int) or isinstance(self.weight_bits, bool) or not 2 <= self.weight_bits <= 8:
            raise ValueError(f"weight_bits must be an integer from 2 to 8, got {self.weight_bits!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        for name in ("activity_reg", "dense_activity_reg", "distill"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        check_sparsity(self.readout_sparsity, "readout sparsity")


def _phases(epochs: int) -> tuple[int, int, int]:
    dense = max(1, epochs // 2)
    prune = max(1, (epochs * 3) // 10)
    qat = max(1, epochs - dense - prune)
    return dense, prune, qat


def evaluate_float(net: EGRUNet, x: np.ndarray, labels: np.ndarray, formats: NumberFormats | None = None) -> float:
    with torch.no_grad():
        out = net(torch.as_tensor(x), formats=formats)
        return float((out.logits[-1].argmax(-1).numpy() == labels).mean())


def evaluate_quant(model: QuantModel, x: np.ndarray, labels: np.ndarray) -> dict:
    """Golden-model metrics on float inputs ``x`` [T, N, I] with class ``labels``."""
    trace = golden.run(model, golden.quantize_input(model, x))
    per_step = trace.effective_macs.sum(axis=2)  # [T, N]
    dense = int(trace.dense_macs.sum())
    eff_mean = float(per_step.mean())
    return {
        "quant_accuracy": golden.accuracy(trace, labels),
        "activity_sparsity": {f"layer{l}": float(1.0 - ev.mean()) for l, ev in enumerate(trace.events)},
        "effective_macs_per_step": eff_mean,
        "effective_macs_per_step_by_layer": {
            **{f"layer{l}": float(trace.effective_macs[:, :, l].mean()) for l in range(len(trace.events))},
            "readout": float(trace.effective_macs[:, :, -1].mean())},
        "dense_macs_per_step": dense,
        "mac_reduction": dense / eff_mean if eff_mean else float("inf"),
    }


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="epoch", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def train(cfg: TrainConfig, *, progress: bool = True, init_layers: list | None = None) -> tuple[QuantModel, dict]:
    """Run the three phases; return the quantized model and the report dictionary.

    ``init_layers``: :class:`~quantize.egru.EGRULayer` s (e.g. imported from EvNN state_dicts)
    whose parameters start the dense phase; their shapes must match the configuration.
    """
    cfg.validate()
    t_start = time.monotonic()
    # One thread and deterministic kernels: the same command gives the same model (parallel
    # reductions would sum in a load-dependent order and training would drift apart).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(cfg, progress, init_layers, t_start)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, progress: bool, init_layers, t_start: float) -> tuple[QuantModel, dict]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    task = load_task(cfg.task)
    formats = NumberFormats(input_frac=choose_input_frac(float(np.abs(task.x_train).max())),
                            weight_bits=cfg.weight_bits)
    net = EGRUNet(task.input_size, [cfg.hidden] * cfg.layers, task.num_classes,
                  thr_mean=cfg.thr_mean, seed=cfg.seed)
    if init_layers:
        if len(init_layers) != cfg.layers:
            raise ValueError(f"{len(init_layers)} initial layers given for a {cfg.layers}-layer model")
        for l, (dst, src) in enumerate(zip(net.layers, init_layers)):
            if (src.input_size, src.hidden_size) != (dst.input_size, dst.hidden_size):
                raise ValueError(f"imported layer {l} is {src.input_size}->{src.hidden_size} but the model "
                                 f"needs {dst.input_size}->{dst.hidden_size} (task {task.name})")
            dst.load_state_dict(src.state_dict())
    xtr = torch.as_tensor(task.x_train)
    ytr = torch.as_tensor(task.y_train)
    n_train = xtr.shape[1]
    batches_per_epoch = math.ceil(n_train / cfg.batch_size)
    dense_ep, prune_ep, qat_ep = _phases(cfg.epochs)

    prune_begin = dense_ep * batches_per_epoch
    prune_end = prune_begin + max(1, (2 * prune_ep * batches_per_epoch) // 3)
    schedule = PruningSchedule(cfg.weight_sparsity, begin=prune_begin, end=prune_end,
                               every=max(1, batches_per_epoch // 4), lanes=cfg.lanes,
                               readout_target=cfg.readout_sparsity, structure=cfg.structure)
    report = {"config": dataclasses.asdict(cfg), "formats": formats.to_dict(),
              "phases": {"dense_epochs": dense_ep, "prune_epochs": prune_ep, "qat_epochs": qat_ep}}

    KD_T = 2.0  # distillation temperature

    def run_epochs(n: int, phase: str, quant: bool, lr: float, step0: int, bar) -> int:
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n * batches_per_epoch)
        step = step0
        for _ in range(n):
            order = torch.as_tensor(rng.permutation(n_train))
            total_loss = 0.0
            for i in range(0, n_train, cfg.batch_size):
                if phase == "prune":
                    schedule.step(net, step)
                idx = order[i:i + cfg.batch_size]
                out = net(xtr[:, idx], formats=formats if quant else None)
                activity = torch.stack([o.mean() for o in out.o]).mean()
                reg = cfg.activity_reg if phase != "dense" else cfg.dense_activity_reg
                logits = out.logits[-1]
                loss = TF.cross_entropy(logits, ytr[idx]) + reg * activity
                if teacher is not None and cfg.distill:
                    # Distillation from the dense model recovers most of what pruning costs.
                    loss = loss + cfg.distill * KD_T * KD_T * TF.kl_div(
                        TF.log_softmax(logits / KD_T, -1), TF.log_softmax(teacher[idx].to(logits.dtype) / KD_T, -1),
                        log_target=True, reduction="batchmean")
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    for layer in net.layers:
                        layer.thr.clamp_(0.0, 1.0)
                total_loss += float(loss.detach()) * len(idx)
                step += 1
            bar.set_postfix_str(f"{phase} loss {total_loss / n_train:.3f}")
            bar.update(1)
        return step

    teacher = None
    with _progress(cfg.epochs, progress) as bar:
        step = run_epochs(dense_ep, "dense", False, cfg.lr, 0, bar)
        report["float_accuracy"] = evaluate_float(net, task.x_test, task.y_test)
        with torch.no_grad():
            teacher = net(xtr).logits[-1].double()
        step = run_epochs(prune_ep, "prune", False, cfg.lr, step, bar)
        schedule.step(net, prune_end)  # the ramp's last point, in case the phase was short
        report["pruned_float_accuracy"] = evaluate_float(net, task.x_test, task.y_test)
        run_epochs(qat_ep, "qat", True, cfg.lr / 10, step, bar)

    model = export(net, formats, meta={"task": task.name, "num_classes": task.num_classes,
                                       "steps": task.steps, "seed": cfg.seed,
                                       "balanced_lanes": cfg.lanes, "structure": cfg.structure})
    report["qat_torch_accuracy"] = evaluate_float(net, task.x_test, task.y_test, formats)
    report.update(evaluate_quant(model, task.x_test, task.y_test))
    report["weight_sparsity"] = model.weight_sparsity()
    report["train_seconds"] = time.monotonic() - t_start
    return model, report

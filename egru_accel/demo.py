"""``egru-accel demo``: the whole pipeline on the embedded default, with one summary.

:func:`run_demo` trains an EGRU on scikit-learn's digits (the default
:class:`~quantize.train.TrainConfig`, as ``egru-accel train --task digits``), prunes and
quantizes it, packs it for the board's lane count, writes the Verilog and the model
image, runs a subset of the test split through the Verilog in cocotb (Icarus) against the
golden model, builds the board's bitstream with the YoWASP tools, and writes into the
output directory:

- ``model.npz`` (the quantized model), ``memories.json`` (the packer's summary),
  ``verilog/egru_core.v`` and ``verilog/summary.json``, ``model.img`` (the UART image);
- ``build_<board>/`` (bitstream, tool logs and the build's ``report.json``);
- ``activity.png``: per layer, a histogram of the fraction of steps each neuron fires
  (golden model on the whole test split);
- ``cycles_vs_events.png``: clock cycles of each simulated step against the events the
  core dispatched in it, measured and ideal;
- ``report.json``: every figure of the summary, the stage reports and the seconds per stage.

The lane count is the board's default (:func:`boards.fit.default_lanes`), so the
simulated cycle counts describe the design that is built. Any difference between the
RTL and the golden model raises :class:`MismatchError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import numpy as np

__all__ = ["run_demo", "format_summary", "plot_activity", "plot_cycles_vs_events", "dispatched_events",
           "default_samples", "check_board", "check_options", "MismatchError", "DEFAULT_BOARD", "SIM_CYCLE_BUDGET", "SUMMARY_ROWS"]

DEFAULT_BOARD = "icebreaker"
#: Simulated clock cycles the default subset aims at: cocotb on Icarus runs about 6,000 to
#: 10,000 cycles/s here, so about 1 to 2 minutes of simulation whatever the lane count.
SIM_CYCLE_BUDGET = 700_000
#: The rows of :func:`format_summary`, in order.
SUMMARY_ROWS = ("float accuracy", "quantized accuracy", "RTL accuracy", "weight sparsity", "activity sparsity",
                "MACs per step", "cycles per step", "memory", "resources", "Fmax", "time")


class MismatchError(Exception):
    """The RTL computed something other than the golden model (a hardware bug)."""


# -- figures ----------------------------------------------------------------------------------

def dispatched_events(inputs: np.ndarray, events: list) -> np.ndarray:
    """Events the core's dispatcher handles at each step, [T, N].

    ``inputs``: layer-0 integers [T, N, I]; ``events``: per layer, bool [T, N, H] (the golden
    trace's ``events``). A step dispatches its non-zero inputs, every layer's events of this
    step (into the next layer, or the readout for the last) and every layer's events of the
    previous step (its recurrent input): the quantity the core's cycles grow with.
    """
    x = np.asarray(inputs)
    if x.ndim != 3:
        raise ValueError(f"inputs must be [T, N, I], got shape {list(x.shape)}")
    total = np.count_nonzero(x, axis=2).astype(np.int64)
    for l, ev in enumerate(events):
        ev = np.asarray(ev)
        if ev.shape[:2] != x.shape[:2]:
            raise ValueError(f"events of layer {l} are {list(ev.shape)}, expected [{x.shape[0]}, {x.shape[1]}, H]")
        fired = np.count_nonzero(ev, axis=2).astype(np.int64)
        total += fired
        total[1:] += fired[:-1]
    return total


def _check_png_path(path) -> str:
    path = os.fspath(path)
    if not path.endswith(".png"):
        raise ValueError(f"plot path must end in .png, got {path!r}")
    return path


def plot_activity(rates: list, path, *, title: str | None = None) -> None:
    """Write a PNG with one histogram per layer of ``rates[l]`` (per neuron, the fraction of
    steps it fires, in [0, 1])."""
    from matplotlib.figure import Figure

    path = _check_png_path(path)
    if not rates:
        raise ValueError("plot_activity needs the rates of at least one layer")
    rates = [np.asarray(r, dtype=np.float64).ravel() for r in rates]
    for l, r in enumerate(rates):
        if r.size == 0 or not np.all((r >= 0) & (r <= 1)):
            raise ValueError(f"layer {l}: rates must be a non-empty array of fractions in [0, 1]")
    L = len(rates)
    fig = Figure(figsize=(max(6.4, 5.0 * L), 4.0), layout="constrained")
    axes = fig.subplots(1, L, squeeze=False)[0]
    bins = np.linspace(0.0, 1.0, 21)
    for l, (ax, r) in enumerate(zip(axes, rates)):
        ax.hist(r, bins=bins, color="tab:blue", edgecolor="white")
        ax.axvline(r.mean(), color="tab:red", linestyle="--", label=f"mean {r.mean():.3f}")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("fraction of steps the neuron fires")
        ax.set_ylabel("neurons")
        ax.set_title(f"layer {l}: {r.size} neurons, {np.count_nonzero(r == 0)} never fire")
        ax.legend(loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)


def plot_cycles_vs_events(events: np.ndarray, cycles: np.ndarray, ideal: np.ndarray, path, *,
                          dense_cycles: float | None = None, title: str | None = None) -> dict:
    """Write a PNG of clock cycles per step (measured and ideal) against events per step.

    ``events``, ``cycles``, ``ideal``: one value per step (any shape, the same for all three).
    Returns the least-squares line of the measured cycles, ``{"intercept", "slope"}`` (cycles,
    cycles per event), which the plot also draws.
    """
    from matplotlib.figure import Figure

    path = _check_png_path(path)
    e = np.asarray(events, dtype=np.float64).ravel()
    c = np.asarray(cycles, dtype=np.float64).ravel()
    i = np.asarray(ideal, dtype=np.float64).ravel()
    if not (e.size == c.size == i.size) or e.size == 0:
        raise ValueError(f"events, cycles and ideal need the same non-zero number of steps, "
                         f"got {e.size}, {c.size}, {i.size}")
    if e.size > 1 and np.ptp(e) > 0:
        slope, intercept = np.polyfit(e, c, 1)
    else:  # one distinct x: no slope to fit
        slope, intercept = 0.0, float(c.mean())
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.scatter(e, c, s=9, alpha=0.5, color="tab:blue", label="measured (cocotb)")
    ax.scatter(e, i, s=9, alpha=0.5, marker="x", color="tab:orange",
               label="ideal: effective MACs / P + H / P")
    xs = np.linspace(e.min(), e.max(), 2)
    ax.plot(xs, intercept + slope * xs, color="tab:blue",
            label=f"fit: {intercept:.0f} + {slope:.1f} cycles/event")
    ax.set_xlabel("events dispatched per step (non-zero inputs + forward + recurrent events)")
    ax.set_ylabel("clock cycles per step")
    ax.set_ylim(bottom=0)
    if dense_cycles is not None:
        ax.set_title((title + "\n" if title else "") +
                     f"dense baseline: {dense_cycles:.0f} cycles per step ({dense_cycles / c.mean():.1f}x the mean)",
                     fontsize=10)
    elif title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=100)
    return {"intercept": float(intercept), "slope": float(slope)}


# -- the summary -------------------------------------------------------------------------------

def _pct(v: float) -> str:
    return f"{100.0 * v:.1f}%"


def _lanes(n: int) -> str:
    return f"{n} lane{'s' if n != 1 else ''}"


def _resource_rows(util: dict) -> list[tuple[str, str, str]]:
    """Summary rows ``("resources" or "", "used/available", "NAME (percent)")``."""
    # The resources that bound the design, as nextpnr names them (iCE40, then ECP5); any
    # other resource in use only if none of these is reported.
    main = ("ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_SPRAM", "ICESTORM_DSP",
            "TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "MULT18X18D")
    names = [n for n in main if n in util] or [n for n, v in util.items() if v["used"]]
    if not names:
        return [("resources", "-", "no utilisation in the build report")]
    return [("resources" if k == 0 else "", f"{util[n]['used']}/{util[n]['available']}",
             f"{n} ({util[n]['used'] / max(1, util[n]['available']):.0%})") for k, n in enumerate(names)]


def memory_breakdown(bits: dict) -> str:
    """The loadable memories by name, then the rest (state, events, accumulators, tables)."""
    from egru_accel.quantize.memory import LOADABLE
    loaded = [m.label for m in LOADABLE]
    working = bits["total"] - sum(bits[k] for k in loaded)
    return ", ".join(f"{k} {bits[k]}" for k in loaded) + f", working memories {working}"


def format_summary(report: dict) -> str:
    """The demo's summary table (plain text, aligned columns) from its ``report.json``."""
    s, b = report["sim"], report.get("build")
    ws = report["weight_sparsity"]
    act = report["activity_sparsity"]
    macs = report["macs_per_step"]
    cyc = report["cycles_per_step"]
    rows = [
        ("float accuracy", _pct(report["float_accuracy"]), f"dense float model, {report['test_sequences']} test sequences"),
        ("quantized accuracy", _pct(report["quant_accuracy"]), "golden integer model, same sequences"),
        ("RTL accuracy", _pct(report["rtl_accuracy"]),
         f"cocotb, first {s['sequences']} test sequences (golden {_pct(s['golden_accuracy'])}); "
         f"{s['mismatches']} mismatches in {s['neuron_steps']} neuron updates"),
        ("weight sparsity", _pct(ws["kernels"]),
         "kernels; " + ", ".join(f"{k} {_pct(v)}" for k, v in ws["per_matrix"].items())),
        ("activity sparsity", _pct(act["mean"]),
         "silent neuron-steps; " + ", ".join(f"{k} {_pct(v)}" for k, v in act["per_layer"].items())),
        ("MACs per step", f"{macs['effective']:.0f}",
         f"effective; dense {macs['dense']} ({macs['reduction']:.1f}x fewer)"),
        ("cycles per step", f"{cyc['mean']:.0f}",
         f"max {cyc['max']}, P = {report['lanes']}; ideal {cyc['ideal']:.0f} ({cyc['over_ideal']:.2f}x); "
         f"dense {cyc['dense']:.0f} ({cyc['dense_over_sparse']:.1f}x more)"),
        ("memory", f"{report['memory_bits']['total']} bits", memory_breakdown(report["memory_bits"])),
    ]
    if b is None:
        rows += [("resources", "-", "not built (--no-build)"), ("Fmax", "-", "not built (--no-build)")]
    else:
        rows += _resource_rows(b.get("utilisation", {}))
        rows.append(("Fmax", f"{b['fmax_mhz']:.1f} MHz",
                     f"target {b['target_mhz']:g} MHz, timing {'met' if b['timing_met'] else 'NOT met'}; "
                     f"{b['board']} ({b['device']}), {_lanes(b['lanes'])}"))
    st = report["stage_seconds"]
    rows.append(("time", f"{report['total_seconds']:.0f} s", ", ".join(f"{k} {v:.0f}" for k, v in st.items())))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {v:>{w1}}  {d}".rstrip() for a, v, d in rows)


# -- the pipeline ------------------------------------------------------------------------------

class _Stages:
    """Times the stages and prints one line per stage (to stderr) when it ends."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.monotonic()
        self.seconds: dict[str, float] = {}
        self.note = ""

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.monotonic()
        self.note = ""
        yield self
        self.seconds[name] = time.monotonic() - t
        self.say(f"{name:<9} {self.seconds[name]:6.1f} s  {self.note}".rstrip())

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", file=sys.stderr, flush=True)


def default_samples(model, lanes: int, x_test: np.ndarray, *, budget: int = SIM_CYCLE_BUDGET) -> int:
    """Test sequences (at least 1, at most all) whose ideal cycle count fits ``budget``.

    The ideal cycles of a step are ``effective MACs / P + H / P`` (the golden model on the
    test split); the core measures a few percent above that.
    """
    from egru_accel.quantize import golden
    trace = golden.run(model, golden.quantize_input(model, x_test))
    per_seq = (trace.effective_macs.sum(axis=2) / lanes + sum(model.hidden_sizes) / lanes).sum(axis=0)   # [N]
    n = int(budget // max(1.0, float(per_seq.mean())))
    return max(1, min(n, x_test.shape[1]))


def check_options(*, samples: int | None = None, epochs: int | None = None, board: str = DEFAULT_BOARD,
                  build: bool = True, lanes: int | None = None, train_config=None):
    """Check :func:`run_demo`'s options before anything runs; return the training
    configuration to use (``TypeError``/``ValueError`` with the reason otherwise)."""
    import dataclasses

    from egru_accel.quantize.lanes import check_lanes
    from egru_accel.quantize.train import TrainConfig

    def positive(name, v):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    positive("samples", samples)
    positive("epochs", epochs)
    positive("lanes", lanes)
    if not isinstance(board, str):
        raise TypeError(f"board must be a board name (str), got {type(board).__name__}")
    if not isinstance(build, bool):
        raise TypeError(f"build must be a bool, got {type(build).__name__}")
    cfg = TrainConfig() if train_config is None else train_config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(cfg).__name__}")
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)
    cfg.validate()
    if cfg.task != "digits":
        raise ValueError(f"the demo runs on the digits task, not {cfg.task!r}")
    if lanes is not None:
        check_lanes(lanes, cfg.hidden)
    check_board(board)
    return cfg


def run_demo(out_dir, *, samples: int | None = None, epochs: int | None = None, board: str = DEFAULT_BOARD,
             build: bool = True, lanes: int | None = None, train_config=None, progress: bool = True,
             simulator: str | None = None) -> dict:
    """Run the demo into the existing directory ``out_dir``; return the report (also written
    to ``out_dir/report.json``).

    Args:
        samples: test sequences to simulate in cocotb (default: :func:`default_samples`,
            about :data:`SIM_CYCLE_BUDGET` clock cycles).
        epochs: training epochs (default: the :class:`~quantize.train.TrainConfig` default).
        board: board to build for and take the lane count from.
        build: run the board build (YoWASP yosys and nextpnr); without it the report has no
            resources or Fmax.
        lanes: lanes P (default: :func:`boards.fit.default_lanes` for ``board``).
        train_config: a :class:`~quantize.train.TrainConfig` (default: ``TrainConfig()``);
            ``epochs`` overrides its epochs.
        progress: progress bars and one line per stage on stderr.
        simulator: ``"icarus"`` or ``"verilator"`` for cocotb (default:
            :func:`~egru_accel.sim.runner.default_simulator`).

    Raises:
        TypeError, ValueError: bad arguments (a bad ``train_config`` raises its own message).
        MismatchError: the RTL differs from the golden model (the report is not written).
        boards errors (``FitError``, ``BuildError``) from the lane choice or the build.
    """
    from egru_accel.quantize import golden
    from egru_accel.quantize.data import load_task
    from egru_accel.quantize.train import train

    # Every option (the board and the lanes included) before the training starts.
    cfg = check_options(samples=samples, epochs=epochs, board=board, build=build, lanes=lanes,
                        train_config=train_config)
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise ValueError(f"output directory {out_dir} does not exist")

    stage = _Stages(progress)
    t_start = time.monotonic()
    task = load_task(cfg.task)

    with stage("train") as st:
        model, train_report = train(cfg, progress=progress)
        model.save(os.path.join(out_dir, "model.npz"))
        st.note = (f"float {_pct(train_report['float_accuracy'])}, quantized {_pct(train_report['quant_accuracy'])}, "
                   f"weight sparsity {_pct(_kernel_sparsity(model))}")

    with stage("pack") as st:
        from egru_accel.hw.params import CoreParams
        from egru_accel.quantize.packer import pack
        chosen = lanes is None
        if chosen:
            from egru_accel.boards.fit import default_lanes
            lanes = default_lanes(board, model)
        from egru_accel.hw.config import AcceleratorConfig
        packed = pack(model, lanes)
        _write_json(os.path.join(out_dir, "memories.json"), packed.summary())
        params = CoreParams(packed, AcceleratorConfig(lanes=lanes))
        memory_bits = packed.memory_bits()
        st.note = _lanes(lanes) + (f" ({board} default)" if chosen else "")
        st.note += f", {memory_bits['total']} memory bits"

    with stage("generate") as st:
        from egru_accel.firmware.image import build_image
        from egru_accel.hw.generate import generate_verilog
        vdir = os.path.join(out_dir, "verilog")
        os.makedirs(vdir, exist_ok=True)
        hw_summary = generate_verilog(params, vdir)
        blob = build_image(params)
        with open(os.path.join(out_dir, "model.img"), "wb") as f:
            f.write(blob)
        st.note = f"verilog/{hw_summary['verilog']}, model.img ({len(blob)} bytes)"

    with stage("simulate") as st:
        import shutil

        from egru_accel.sim.report import simulate
        n_test = task.x_test.shape[1]
        if samples is None:
            samples = default_samples(model, lanes, task.x_test)
        k = min(samples, n_test)
        x_sub = golden.quantize_input(model, task.x_test[:, :k])           # [T, K, I]
        detail: dict = {}
        sim_dir = os.path.join(out_dir, "sim")
        sim_report = simulate(model, lanes=lanes, sequences=np.ascontiguousarray(x_sub.transpose(1, 0, 2)),
                              labels=task.y_test[:k], build_dir=sim_dir, progress=progress, detail=detail,
                              simulator=simulator)
        shutil.rmtree(sim_dir, ignore_errors=True)
        if sim_report["mismatches"]:
            raise MismatchError(f"the RTL differs from the golden model in {sim_report['mismatches']} values; "
                                "first ones:\n  " + "\n  ".join(sim_report["first_mismatches"][:10]))
        st.note = (f"{k} sequence{'s' if k > 1 else ''}, 0 mismatches, RTL accuracy {_pct(sim_report['rtl_accuracy'])}, "
                   f"{sim_report['cycles_per_step']['mean']:.0f} cycles per step")

    build_report = None
    if build:
        with stage("build") as st:
            from egru_accel.boards.build import build as build_board
            # progress=None: the build's own display (one line rewritten in place on a terminal).
            build_report = build_board(board, model, os.path.join(out_dir, f"build_{board}"), lanes=lanes,
                                       progress=None if progress else (lambda text: None))
            st.note = (f"Fmax {build_report['fmax_mhz']:.1f} MHz (target {build_report['target_mhz']:g} MHz, "
                       f"timing {'met' if build_report['timing_met'] else 'NOT met'})")

    with stage("plots") as st:
        full = golden.run(model, golden.quantize_input(model, task.x_test))
        rates = [ev.mean(axis=(0, 1)) for ev in full.events]
        plot_activity(rates, os.path.join(out_dir, "activity.png"),
                      title=f"golden model on {n_test} test sequences x {task.steps} steps")
        events = dispatched_events(x_sub, detail["trace"].events).T            # [K, T] like step_cycles
        fit = plot_cycles_vs_events(events, detail["step_cycles"], detail["ideal_cycles"],
                                    os.path.join(out_dir, "cycles_vs_events.png"),
                                    dense_cycles=float(np.mean(detail["dense_step_cycles"])),
                                    title=f"{_lanes(lanes)}, {k} test sequences x {task.steps} steps")
        st.note = "activity.png, cycles_vs_events.png"

    ws = model.weight_sparsity()
    ideal = sim_report["ideal_cycles_per_step"]["mean"]
    dense = sim_report["dense_cycles_per_step"]["mean"]
    cyc = sim_report["cycles_per_step"]
    report = {
        "task": cfg.task, "board": board, "lanes": lanes, "built": build, "test_sequences": n_test,
        "float_accuracy": train_report["float_accuracy"],
        "quant_accuracy": train_report["quant_accuracy"],
        "rtl_accuracy": sim_report["rtl_accuracy"],
        "weight_sparsity": {"kernels": _kernel_sparsity(model), "per_matrix": ws},
        "activity_sparsity": {"mean": float(1.0 - np.mean([ev.mean() for ev in full.events])),
                              "per_layer": train_report["activity_sparsity"]},
        "macs_per_step": {"effective": train_report["effective_macs_per_step"],
                          "dense": train_report["dense_macs_per_step"],
                          "reduction": train_report["mac_reduction"]},
        "cycles_per_step": {"mean": cyc["mean"], "max": cyc["max"], "ideal": ideal, "over_ideal": cyc["mean"] / ideal,
                            "dense": dense, "dense_over_sparse": dense / cyc["mean"],
                            "fit": fit, "sequences": k},
        "activity_per_neuron": [r.tolist() for r in rates],
        "memory_bits": memory_bits,
        "hardware": hw_summary,
        "train": train_report,
        "sim": sim_report,
        "build": build_report,
        "files": sorted(["model.npz", "memories.json", "verilog", "model.img", "activity.png",
                         "cycles_vs_events.png", "report.json"] + ([f"build_{board}"] if build else [])),
    }
    report["stage_seconds"] = dict(stage.seconds)
    report["total_seconds"] = time.monotonic() - t_start
    _write_json(os.path.join(out_dir, "report.json"), report)
    return report


def _kernel_sparsity(model) -> float:
    """Fraction of zero weights over every layer's input and recurrent kernels."""
    zeros = size = 0
    for layer in model.layers:
        for m in (layer.W, layer.R):
            zeros += m.size - np.count_nonzero(m)
            size += m.size
    return zeros / size


def check_board(board: str) -> None:
    """ValueError naming the known boards unless ``board`` is one of them."""
    from egru_accel.boards.boards import get_board
    get_board(board)


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")

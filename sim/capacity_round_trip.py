"""One bitstream, many models: a capacity build at the bit level through the host driver.

:func:`run_capacity_round_trip` writes the Verilog of :class:`hw.capacity_system.CapacitySystem`
(UART, bridge, core v2) for a :class:`~egru_accel.quantize.capacity.Capacity`, with no model in
its memories, and runs the cocotb test module :mod:`sim.system_cocotb_test` on it with
:func:`capacity_scenario`: the unchanged host driver (:class:`firmware.driver.EGRUDevice`)
talks to the design's UART pins and

1. reads INFO (the capacity) and STATUS; a RUN before any load must answer NO_MODEL;
2. loads each model in turn (``EGRUDevice.load_model``: placed for the capacity INFO states,
   a check pass, then the write pass) and runs its sequences, each after a START, in two RUN
   requests;
3. tries a model over the capacity: the driver must refuse it (``CapacityError``) before a byte
   goes out, and the model before must still answer;
4. sends raw images the device must refuse (``bad_images``: for another capacity, a run-time
   register outside the build's limits, a flipped bit), each followed by a RUN of the model before;
5. loads the first model again and runs it.

Every RUN is compared with :func:`quantize.golden.run` of the model that should be loaded,
integer by integer; each refusal with the status or error it must give.

Command line::

    python -m sim.capacity_round_trip --model A.npz --model B.npz --model C.npz --lanes 8 --out DIR

(``--ice40``: the iCEBreaker configuration: SB_MAC16 lanes, a wide weight memory in SPRAM,
lane-window packing, yosys's models of the primitives; ``--digits``: digits test sequences)
writes ``DIR/report.json``; exit status 0 only when everything matched.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from egru_accel.firmware.capacity_image import build_capacity_image, capacity_info
from egru_accel.firmware.driver import DeviceError, EGRUDevice
from egru_accel.firmware.protocol import Command, ProtocolError
from egru_accel.quantize import golden
from egru_accel.quantize.capacity import Capacity, CapacityError, place
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.shared_rows import LoadMemory

from .runner import default_simulator, run_cocotb, write_json_config
from .verilog import primitive_sources

__all__ = ["run_capacity_round_trip", "capacity_scenario", "refused_images", "over_capacity",
           "write_capacity_system_verilog"]

TEST_MODULE = "egru_accel.sim.system_cocotb_test"
TOPLEVEL = "egru_system"
PERIOD_NS = 10


def capacity_scenario(device: EGRUDevice, plan: dict, *, probe=None) -> dict:
    """Play the scenario of the module docstring on ``device``; return what it answered.

    ``plan``: ``models`` (``[{"name", "path", "sequences"}]``: model files and [N, T, I]
    integer lists), ``over`` (``{"name", "path"}``, a model over the capacity), ``bad_images``
    (``[{"name", "image"}]``, hex), ``split`` (steps in a sequence's first RUN)."""
    log = {"info_raw": None, "capacity": None, "phases": [], "error": None}
    written = device.transport.stats if hasattr(device.transport, "stats") else None

    def phase(name: str, **entry) -> None:
        if probe is not None:
            entry["probe"] = probe()
        entry.update(name=name, status=device.status())
        log["phases"].append(entry)

    def run(name: str, model: str, seq) -> None:
        x = np.asarray(seq, dtype=np.int64)
        split = min(max(1, plan["split"]), len(x))
        device.start()
        parts = [device.run(x[:split])] + ([device.run(x[split:])] if split < len(x) else [])
        phase(name, kind="run", model=model, inputs=x.tolist(), outputs=np.concatenate(parts).tolist())

    def attempt(fn):
        try:
            fn()
            return "OK", ""
        except ProtocolError as e:
            return (e.status.name if e.status is not None else "MALFORMED"), str(e)
        except CapacityError as e:
            return "CapacityError", str(e)

    def sent() -> int | None:
        return written["bytes_written"] if written is not None else None

    try:
        log["info_raw"] = device.request(Command.INFO).hex()
        log["capacity"] = device.capacity().to_dict()
        phase("reset", kind="status")
        x0 = np.asarray(plan["models"][0]["sequences"][0], dtype=np.int64)
        result, message = attempt(lambda: device.run(x0[:1]))
        phase("run before a load", kind="refusal", result=result, message=message)
        models = {m["name"]: QuantModel.load(m["path"]) for m in plan["models"]}
        order = [m["name"] for m in plan["models"]] + [plan["models"][0]["name"]]
        seqs = {m["name"]: m["sequences"] for m in plan["models"]}
        for k, name in enumerate(order):
            before = sent()
            result, message = attempt(lambda: device.load_model(models[name]))
            phase(f"load {name}" + (" again" if k >= len(plan["models"]) else ""), kind="load", model=name,
                  result=result, message=message, bytes=None if before is None else sent() - before)
            for n, seq in enumerate(seqs[name]):
                run(f"{name}/{n}" + (" again" if k >= len(plan["models"]) else ""), name, seq)
            if k == len(plan["models"]) - 1:
                # The last model is loaded: what must be refused, each followed by a RUN of it.
                over = plan["over"]
                before = sent()
                result, message = attempt(lambda: device.load_model(QuantModel.load(over["path"])))
                phase(f"load {over['name']}", kind="refusal", result=result, message=message,
                      bytes=None if before is None else sent() - before)
                run(f"{name} after {over['name']}", name, seqs[name][0])
                for bad in plan["bad_images"]:
                    result, message = attempt(lambda: device.load(bytes.fromhex(bad["image"])))
                    phase(f"load {bad['name']}", kind="refusal", result=result, message=message)
                    run(f"{name} after {bad['name']}", name, seqs[name][0])
    except DeviceError as e:
        log["error"] = f"{type(e).__name__}: {e}"
    return log


def refused_images(model: QuantModel, capacity: Capacity) -> list[tuple[str, bytes, str]]:
    """Images a device built for ``capacity`` must refuse, each ``(name, image, status)``:
    ``model``'s image for a build of another capacity (one more bias shift: the same sizes),
    with its ``layer0.hidden`` register above the capacity (the CRC32 made good again), and
    with a flipped bit in its data."""
    image = build_capacity_image(place(model, capacity), capacity)
    other = dataclasses.replace(capacity, max_bias_shift=capacity.max_bias_shift + 1)
    out = [("an image for another capacity", build_capacity_image(place(model, other), other), "IMAGE_SIGNATURE")]
    names = capacity.layout.param_names()
    # The PARAMS section is the last: its word of layer0.hidden, 2 bytes each, before the CRC32.
    at = len(image) - 4 - 2 * len(names) + 2 * names.index("layer0.hidden")
    body = bytearray(image[:-4])
    body[at:at + 2] = struct.pack("<H", capacity.hidden[0] + 1)
    out.append(("a layer over its capacity", bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))),
                "IMAGE_CAPACITY"))
    flipped = bytearray(image)
    flipped[len(image) // 2] ^= 0x10
    out.append(("a flipped bit", bytes(flipped), "IMAGE_CRC"))
    return out


def over_capacity(model: QuantModel, capacity: Capacity) -> QuantModel:
    """``model`` with zero-weight inputs added up to one more than the capacity's: a model
    the build cannot take, in the build's number formats."""
    layer = model.layers[0]
    extra = capacity.inputs + 1 - model.input_size
    W = np.vstack([layer.W, np.zeros((extra, layer.W.shape[1]), dtype=layer.W.dtype)])
    return dataclasses.replace(model, layers=[dataclasses.replace(layer, W=W)] + list(model.layers[1:]))


def write_capacity_system_verilog(capacity: Capacity, config, build_dir: str | os.PathLike[str], *,
                                  clk_hz: int, baud: int, bridge_clk_hz: int | None = None) -> Path:
    """Write the Verilog of ``CapacitySystem`` (no model at reset) to ``{build_dir}/egru_system.v``
    (reused when written for the same capacity, configuration and sources). ``bridge_clk_hz``:
    the UART and bridge in a clock domain of their own (ports ``bridge_clk``, ``bridge_rst``)."""
    from egru_accel.hw.capacity_system import CapacitySystem

    from egru_accel.firmware import capacity_image, image
    from egru_accel.quantize import capacity as capacity_module
    from egru_accel.quantize import shared_rows

    from .verilog import generator_digest, write_verilog

    build = Path(build_dir).resolve()
    path, key_file = build / f"{TOPLEVEL}.v", build / f"{TOPLEVEL}.key"
    data = {"capacity": capacity.to_dict(), "config": dataclasses.asdict(config), "clk_hz": clk_hz, "baud": baud,
            "bridge_clk_hz": bridge_clk_hz, **generator_digest(shared_rows, capacity_module, capacity_image, image)}
    key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    if path.is_file() and key_file.is_file() and key_file.read_text() == key:
        return path
    build.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    write_verilog(CapacitySystem(capacity, config, clk_hz=clk_hz, baud=baud, bridge_clk_hz=bridge_clk_hz), path,
                  name=TOPLEVEL)
    key_file.write_text(key)
    return path


def run_capacity_round_trip(capacity: Capacity, config, models: dict[str, QuantModel], *,
                            build_dir: str | os.PathLike[str], sequences: dict[str, np.ndarray],
                            split: int | None = None, baud: int = 115200, divisor: int = 8,
                            driver_timeout_s: float = 2.0, timeout_s: float | None = None,
                            simulator: str | None = None, bridge_period_ns: int | None = None) -> dict:
    """Run :func:`capacity_scenario` under cocotb on a ``capacity`` build of ``config``
    (``model_at_reset=False``); return the report: ``ok``, ``mismatches`` (``outputs``:
    integers differing from the golden model's, ``refusals``: refusals that did not give
    their status, ``loads``: loads that failed, ``bytes``: bytes sent for a model the driver
    must refuse), ``runs``, ``refusals``, ``cycles``, ``wall_seconds``, ``simulator``.
    The model over the capacity is the last model with one input more than the capacity's
    (:func:`over_capacity`); the raw images the device must refuse are :func:`refused_images`
    of the last model. ``bridge_period_ns``: the UART and the bridge in a clock domain of their
    own with that period (an even number of ns; the core's is ``PERIOD_NS``), behind the
    clock-domain crossing; ``divisor`` then counts the bridge's cycles."""
    if bridge_period_ns is not None and (isinstance(bridge_period_ns, bool) or not isinstance(bridge_period_ns, int)
                                         or bridge_period_ns < 2 or bridge_period_ns % 2):
        raise ValueError(f"bridge_period_ns must be an even number of ns of at least 2, not {bridge_period_ns!r}")
    build = Path(build_dir).resolve()
    build.mkdir(parents=True, exist_ok=True)
    plan_models = []
    for name, model in models.items():
        path = build / f"model_{name}.npz"
        model.save(path)
        plan_models.append({"name": name, "path": str(path),
                            "sequences": np.asarray(sequences[name], dtype=np.int64).tolist()})
    over_path = build / "model_over.npz"
    last = models[list(models)[-1]]
    over_capacity(last, capacity).save(over_path)
    bad = refused_images(last, capacity)
    T = min(np.asarray(s).shape[1] for s in sequences.values())
    plan = {"models": plan_models, "over": {"name": "a model over the capacity", "path": str(over_path)},
            "bad_images": [{"name": n, "image": img.hex()} for n, img, _ in bad],
            "split": int(split if split is not None else max(1, T // 2))}
    link_hz = baud * divisor             # the UART's clock: the core's, or the bridge's own
    if bridge_period_ns is None:
        clk_hz, bridge_hz = link_hz, None
    else:
        clk_hz, bridge_hz = round(link_hz * bridge_period_ns / PERIOD_NS), link_hz
    verilog = write_capacity_system_verilog(capacity, config, build, clk_hz=clk_hz, baud=baud, bridge_clk_hz=bridge_hz)
    results_file = build / "results.json"
    results_file.unlink(missing_ok=True)
    env = write_json_config({"scenario": "capacity", "plan": plan, "divisor": divisor, "period_ns": PERIOD_NS,
                             "bridge_period_ns": bridge_period_ns, "clk_hz": link_hz,
                             "driver_timeout_s": driver_timeout_s, "chunk": 256,
                             "results": str(results_file)}, path=build / "config.json")
    image_bytes = len(build_capacity_image(place(last, capacity), capacity))
    line_bytes = 2 * image_bytes * (len(models) + 1) + len(bad) * image_bytes
    simulator = simulator or default_simulator(cycles=10 * divisor * line_bytes, lanes=capacity.lanes)
    cells, defines = primitive_sources(config)
    start = time.monotonic()
    run_cocotb(verilog_sources=[verilog] + cells, toplevel=TOPLEVEL, test_module=TEST_MODULE,
               build_dir=build / f"sim_{simulator}", extra_env=env, timeout_s=timeout_s, simulator=simulator,
               defines=defines)
    wall = time.monotonic() - start
    data = json.loads(results_file.read_text())
    got = data["log"]
    expected_refusals = {"run before a load": "NO_MODEL", f"load {plan['over']['name']}": "CapacityError"}
    expected_refusals.update({f"load {n}": status for n, _, status in bad})
    mism = {"outputs": 0, "refusals": 0, "loads": 0, "bytes": 0,
            "info": int(got["info_raw"] != capacity_info(capacity).hex())}
    runs, refusals = [], []
    for ph in got["phases"]:
        if ph["kind"] == "run":
            want = golden.run(models[ph["model"]], np.asarray(ph["inputs"], dtype=np.int64)[:, None, :]).logits[:, 0]
            out = np.asarray(ph["outputs"], dtype=np.int64)
            n = int((out != want).sum()) if out.shape == want.shape else int(want.size)
            mism["outputs"] += n
            runs.append({"phase": ph["name"], "model": ph["model"], "steps": int(want.shape[0]), "mismatches": n,
                         "step_cycles": ph["status"]["step_cycles"]})
        elif ph["kind"] == "load":
            mism["loads"] += int(ph["result"] != "OK")
        elif ph["kind"] == "refusal":
            want = expected_refusals.get(ph["name"])
            mism["refusals"] += int(ph["result"] != want)
            if ph["name"] == f"load {plan['over']['name']}":
                mism["bytes"] += int(ph["bytes"] != 0)
            refusals.append({"phase": ph["name"], "result": ph["result"], "expected": want,
                             "message": ph["message"], "bytes_sent": ph.get("bytes")})
    expected_phases = 2 + (len(models) + 1) + sum(len(s) for s in sequences.values()) \
        + len(sequences[list(models)[0]]) + 2 * (1 + len(bad))
    missing = expected_phases - len(got["phases"])
    cycles = int(data["cycles"])
    return {"ok": got["error"] is None and missing == 0 and not any(mism.values()), "mismatches": mism,
            "missing_phases": missing, "runs": runs, "refusals": refusals, "capacity": got["capacity"],
            "image_bytes": image_bytes, "cycles": cycles, "simulated_seconds": cycles / clk_hz,
            "bridge_period_ns": bridge_period_ns,
            "wall_seconds": wall, "sim_wall_seconds": data["wall_time_s"], "transport": data["transport"],
            "framing_errors": data["framing_errors"], "error": got["error"], "simulator": simulator}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.capacity_round_trip", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a quantized model file (repeat: 2 or more)")
    parser.add_argument("--lanes", type=int, required=True, help="lanes P")
    parser.add_argument("--ice40", action="store_true",
                        help="the iCEBreaker configuration: SB_MAC16 lanes, a wide weight memory in SPRAM, "
                             "lane-window packing")
    parser.add_argument("--out", required=True, help="directory for the build and report.json")
    parser.add_argument("--sequences", type=int, default=2, help="sequences per model (default 2)")
    parser.add_argument("--steps", type=int, default=6, help="steps per random sequence (default 6)")
    parser.add_argument("--digits", action="store_true",
                        help="run each model on digits test sequences (model k on sequences k*N ..) instead of "
                             "random inputs")
    parser.add_argument("--divisor", type=int, default=8, help="clock cycles per UART bit (default 8)")
    parser.add_argument("--bridge-period", type=int, default=None, metavar="NS",
                        help="the UART and bridge in a clock domain of their own with this period in ns (even; "
                             f"the core's is {PERIOD_NS}), behind the clock-domain crossing")
    parser.add_argument("--simulator", choices=("icarus", "verilator"), default=None)
    parser.add_argument("--timeout", type=float, default=None, help="wall-clock limit of the simulation (s)")
    args = parser.parse_args(argv)
    from egru_accel.hw.shared_core import SharedCoreConfig
    from egru_accel.quantize.random_model import random_inputs

    if len(args.model) < 2:
        parser.error("give two or more --model files")
    models = {f"M{k}": QuantModel.load(p) for k, p in enumerate(args.model)}
    structure = "lane-window" if args.ice40 else "unstructured"
    memory = "wide" if args.ice40 else "lanes"
    capacity = Capacity.covering(list(models.values()), lanes=args.lanes, structure=structure, weight_memory=memory)
    config = SharedCoreConfig(lane="sb_mac16" if args.ice40 else "fabric", weight_memory=memory,
                              weight_ram="ice40_spram" if args.ice40 else "inferred", model_at_reset=False)
    if args.digits:
        from egru_accel.quantize.data import load_task
        task = load_task("digits")
        N = args.sequences
        seqs = {n: golden.quantize_input(m, task.x_test[:, k * N:(k + 1) * N].transpose(1, 0, 2))
                for k, (n, m) in enumerate(models.items())}
    else:
        seqs = {n: random_inputs(m, steps=args.steps, sequences=args.sequences, seed=k)
                for k, (n, m) in enumerate(models.items())}
    out = Path(args.out)
    report = run_capacity_round_trip(capacity, config, models, build_dir=out, sequences=seqs, divisor=args.divisor,
                                     timeout_s=args.timeout, simulator=args.simulator,
                                     bridge_period_ns=args.bridge_period)
    report["models"] = {n: str(p) for n, p in zip(models, args.model)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'OK' if report['ok'] else 'FAILED'}: mismatches {report['mismatches']}, {report['cycles']} cycles "
          f"in {report['wall_seconds']:.1f} s ({report['simulator']}); {out / 'report.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

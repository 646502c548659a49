"""The acceptance test of run-time loading: the whole system at the bit level through the host driver.

:func:`run_round_trip` builds the Verilog of :class:`hw.system.EGRUSystem` with model A in
its memories, and runs the cocotb test module :mod:`sim.system_cocotb_test` on it in Icarus
Verilog. There the unchanged host driver (:class:`firmware.driver.EGRUDevice`) talks to the
design's UART pins through :class:`sim.uart_cocotb.SimTransport` and plays
:func:`host_scenario`:

1. INFO (raw payload) and STATUS;
2. model A: each sequence after a START, in two RUN requests (the second continues the first);
3. load image B (:func:`firmware.image.build_image` of model B) and run B's sequences;
4. for each corrupted image (:func:`corrupted_images`: one flipped bit in the magic, version,
   signature, section table, data and CRC32; truncated; another version with a valid CRC32;
   the image of a model with another hidden size): ``EGRUDevice.load``, STATUS, then a RUN,
   which must still compute model B.

The same scenario runs against :class:`firmware.reference.ReferenceDevice` (the behavioural
specification) for the expected statuses; every RUN is compared with
:func:`quantize.golden.run` of the model that should be loaded, integer by integer.

Command line, for any model file::

    python -m sim.system_round_trip --model M.npz --lanes 2 --out DIR [--divisor 8] [--steps 6]

writes ``DIR/report.json`` (mismatch counts, statuses, cycles, seconds); model B is model A
with every weight and bias negated. Exit status 0 only when everything matched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from egru_accel.firmware.driver import DeviceError, DeviceTransport, EGRUDevice
from egru_accel.firmware.image import build_image, hardware_signature, info_payload
from egru_accel.firmware.protocol import MAX_PAYLOAD, Command, ProtocolError
from egru_accel.firmware.reference import ReferenceDevice
from egru_accel.hw.params import CoreParams
from egru_accel.quantize import golden
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.packer import unpack

from .runner import default_simulator, run_cocotb, write_json_config

__all__ = ["run_round_trip", "host_scenario", "corrupted_images", "negated_model", "without_weight_min",
           "write_system_verilog", "TEST_MODULE", "TOPLEVEL", "PERIOD_NS"]

TEST_MODULE = "egru_accel.sim.system_cocotb_test"
TOPLEVEL = "egru_system"
#: Clock period of the simulation (ns); the design's own clock rate is ``baud * divisor``.
PERIOD_NS = 10


# -- models and images ---------------------------------------------------------------------------

def _map_weights(model: QuantModel, f) -> QuantModel:
    layers = [dataclasses.replace(layer, W=f(layer.W), R=f(layer.R)) for layer in model.layers]
    return dataclasses.replace(model, layers=layers, readout=dataclasses.replace(model.readout, W=f(model.readout.W)))


def without_weight_min(model: QuantModel) -> QuantModel:
    """``model`` with every weight at the format's minimum (e.g. -128) raised by one, so that
    its negation is representable."""
    lo = model.formats.weight_min
    return _map_weights(model, lambda W: np.where(W == lo, lo + 1, W))


def negated_model(model: QuantModel) -> QuantModel:
    """``model`` with every weight and bias negated (thresholds and shifts kept).

    Raises ``ValueError`` if a weight equals the format's minimum (its negation does not fit;
    see :func:`without_weight_min`)."""
    lo = model.formats.weight_min
    mats = [m for layer in model.layers for m in (layer.W, layer.R)] + [model.readout.W]
    if any((np.asarray(m) == lo).any() for m in mats):
        raise ValueError(f"the model has weights of {lo}, whose negation does not fit in "
                         f"{model.formats.weight_bits} bits")
    neg = _map_weights(model, lambda W: -np.asarray(W))
    layers = [dataclasses.replace(layer, bias_x=-np.asarray(layer.bias_x), bias_h=-np.asarray(layer.bias_h))
              for layer in neg.layers]
    return dataclasses.replace(neg, layers=layers,
                               readout=dataclasses.replace(neg.readout, bias=-np.asarray(neg.readout.bias)))


def _flip(image: bytes, offset: int, mask: int) -> bytes:
    out = bytearray(image)
    out[offset] ^= mask
    return bytes(out)


def corrupted_images(image: bytes, *, layers: int, other: bytes) -> list[tuple[str, bytes]]:
    """Damaged variants of a valid ``image`` (of a core with ``layers`` layers), plus
    ``other``, a valid image for another bitstream. Offsets follow :mod:`firmware.image`."""
    table = 20 + 2 * layers + 11 + 2               # section table: after shapes, formats, count
    header_len = struct.unpack_from("<H", image, 6)[0]
    versioned = bytearray(image[:-4])
    struct.pack_into("<H", versioned, 4, struct.unpack_from("<H", image, 4)[0] + 1)
    return [
        ("magic_bit", _flip(image, 1, 0x01)),
        ("version_bit", _flip(image, 5, 0x80)),
        ("signature_bit", _flip(image, 9, 0x10)),
        ("section_table_bit", _flip(image, table + 12 + 4, 0x01)),      # section 1's word count
        ("data_bit", _flip(image, (header_len + len(image) - 4) // 2, 0x04)),
        ("crc_bit", _flip(image, len(image) - 1, 0x80)),
        ("truncated", image[:len(image) * 2 // 3]),
        ("version_valid_crc", bytes(versioned) + struct.pack("<I", zlib.crc32(bytes(versioned)))),
        ("other_hidden_size", other),
    ]


# -- the host's side -----------------------------------------------------------------------------

def host_scenario(device: EGRUDevice, plan: dict, *, probe=None) -> dict:
    """Play the round trip (module docstring) on ``device``; return what it answered.

    ``plan``: ``sequences_a``/``sequences_b`` ([N, T, I] integer lists), ``split`` (steps
    in a sequence's first RUN), ``image_b`` and ``corrupted`` (``[{"name", "image"}]``),
    images as hex. ``probe()``, if given, adds a dict to every phase (e.g. the cycle count).
    A device that stops answering (:class:`DeviceError`) ends the scenario with ``error``.
    """
    log = {"info_raw": None, "phases": [], "error": None}

    def phase(name: str, **entry) -> None:
        if probe is not None:
            entry["probe"] = probe()        # before STATUS, whose answer would clear the error LED
        entry.update(name=name, status=device.status())
        log["phases"].append(entry)

    def run(name: str, model: str, seq) -> None:
        x = np.asarray(seq, dtype=np.int64)
        split = min(max(1, plan["split"]), len(x))
        device.start()
        parts = [device.run(x[:split])] + ([device.run(x[split:])] if split < len(x) else [])
        phase(name, kind="run", model=model, inputs=x.tolist(), outputs=np.concatenate(parts).tolist())

    def load(name: str, image: bytes) -> None:
        try:
            device.load(image)
            result, message = "OK", ""
        except ProtocolError as e:
            result, message = (e.status.name if e.status is not None else "MALFORMED"), str(e)
        # The driver's message names the request that failed (e.g. "LOAD_END failed: IMAGE_CRC").
        phase(name, kind="load", result=result, command=message.split(" ")[0] if message else "")

    try:
        log["info_raw"] = device.request(Command.INFO).hex()
        device.info()
        phase("reset", kind="status")
        for n, seq in enumerate(plan["sequences_a"]):
            run(f"A/{n}", "A", seq)
        load("B", bytes.fromhex(plan["image_b"]))
        for n, seq in enumerate(plan["sequences_b"]):
            run(f"B/{n}", "B", seq)
        for k, bad in enumerate(plan["corrupted"]):
            load(bad["name"], bytes.fromhex(bad["image"]))
            run(f"B after {bad['name']}", "B", plan["sequences_b"][k % len(plan["sequences_b"])])
    except DeviceError as e:
        log["error"] = f"{type(e).__name__}: {e}"
    return log


# -- the design ----------------------------------------------------------------------------------

def write_system_verilog(params: CoreParams, build_dir: str | os.PathLike[str], *, clk_hz: int,
                         baud: int) -> Path:
    """Write the Verilog of ``EGRUSystem`` for ``params`` at ``clk_hz`` and ``baud`` to
    ``{build_dir}/egru_system.v`` (reused when written for the same parameters and sources)."""
    from egru_accel.hw.system import EGRUSystem

    from .cocotb_core import _params_key
    from .verilog import write_verilog

    build = Path(build_dir).resolve()
    path, key_file = build / f"{TOPLEVEL}.v", build / f"{TOPLEVEL}.key"
    params = params.replace_config(clk_hz=clk_hz, baud=baud)
    key = _params_key(params)
    if path.is_file() and key_file.is_file() and key_file.read_text() == key:
        return path
    build.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    write_verilog(EGRUSystem(params), path, name=TOPLEVEL)
    key_file.write_text(key)
    return path


# -- the round trip ------------------------------------------------------------------------------

def _count_output_mismatches(got, expected: np.ndarray) -> int:
    got = np.asarray(got, dtype=np.int64)
    if got.shape != expected.shape:
        return int(expected.size)          # a missing or misshaped answer: every value is wrong
    return int((got != expected).sum())


def run_round_trip(params_a: CoreParams, model_b: QuantModel, *, build_dir: str | os.PathLike[str],
                   sequences: np.ndarray, other_model: QuantModel | None = None, split: int | None = None,
                   baud: int = 115200, divisor: int = 8, driver_timeout_s: float = 2.0,
                   timeout_s: float | None = None, waves: bool | str = False,
                   simulator: str | None = None) -> dict:
    """Run the round trip (module docstring) under cocotb; return the report.

    Args:
        params_a: The bitstream: shapes, formats and model A in the memories.
        model_b: The model to load; its image must have ``params_a``'s hardware signature.
        sequences: Layer-0 integer inputs [N, T, I], run on A and on B.
        other_model: A model with another shape (for the wrong-shapes image); ``None``: a
            random model with ``lanes`` more neurons in the last layer.
        split: Steps in each sequence's first RUN request (default ``T // 2``).
        baud, divisor: The UART: the design is built for ``clk_hz = baud * divisor``.
        driver_timeout_s: The driver's timeout, counted in simulated seconds by the transport.
        timeout_s: Wall-clock limit of the simulation; ``waves`` as in :func:`sim.runner.run_cocotb`.
        simulator: ``"icarus"`` or ``"verilator"``; ``None``: the faster one for this run's length
            (:func:`sim.runner.default_simulator`).

    Returns:
        ``ok`` (everything matched and nothing failed), ``mismatches`` (``outputs``: integers
        differing from the golden model, ``loads``: load results differing from the
        reference device, ``status``: STATUS answers differing, ``info``), ``loads``
        (per image: result, expected, request that failed), ``runs``, ``leds``, ``cycles``,
        ``simulated_seconds`` (at ``clk_hz``), ``wall_seconds``, ``cycles_per_second``,
        ``transport`` (byte and read counts), ``error``.

    Raises:
        ValueError: model B's image is for another bitstream, or bad sequences.
        sim.runner.SimulationError: the build or the simulation failed.
    """
    P = params_a.lanes
    params_b = CoreParams.from_model(model_b, params_a.config)
    if hardware_signature(params_b) != hardware_signature(params_a):
        why = "; ".join(params_b.layout.mismatches(params_a.layout)) or "the hardware signatures differ"
        raise ValueError(f"model B's image is for another bitstream: {why}")
    x = np.asarray(sequences)
    if x.ndim != 3 or x.shape[2] != params_a.layout.input_size or min(x.shape) < 1:
        raise ValueError(f"expected sequences [N, T, {params_a.layout.input_size}], got {list(x.shape)}")
    if other_model is None:
        from egru_accel.quantize.random_model import random_model
        hidden = list(params_a.layout.hidden)
        hidden[-1] += P
        other_model = random_model(inputs=params_a.layout.input_size, hidden=hidden, outputs=params_a.layout.outputs,
                                   lanes=P, seed=1)
    image_b = build_image(params_b)
    other = build_image(CoreParams.from_model(other_model, params_a.config))
    corrupted = corrupted_images(image_b, layers=params_a.layout.n_layers, other=other)
    plan = {"sequences_a": x.astype(np.int64).tolist(), "sequences_b": x.astype(np.int64).tolist(),
            "split": int(split if split is not None else max(1, x.shape[1] // 2)), "image_b": image_b.hex(),
            "corrupted": [{"name": n, "image": img.hex()} for n, img in corrupted]}

    # The specification's answers: the same scenario against the reference device.
    expected = host_scenario(EGRUDevice(DeviceTransport(ReferenceDevice(params_a)), chunk=MAX_PAYLOAD), plan)

    clk_hz = baud * divisor
    build = Path(build_dir).resolve()
    verilog = write_system_verilog(params_a, build, clk_hz=clk_hz, baud=baud)
    results_file = build / "results.json"
    results_file.unlink(missing_ok=True)
    config = {"plan": plan, "divisor": divisor, "period_ns": PERIOD_NS, "clk_hz": clk_hz,
              "driver_timeout_s": driver_timeout_s, "chunk": MAX_PAYLOAD, "results": str(results_file)}
    env = write_json_config(config, path=build / "config.json")
    # Every image goes over the line twice (check pass, write pass), 10 bit times of `divisor`
    # cycles per byte; the rest (requests, outputs) is small beside it.
    line_bytes = 2 * (len(image_b) + sum(len(img) for _, img in corrupted)) + 8 * x.size
    simulator = simulator or default_simulator(cycles=10 * divisor * line_bytes, lanes=params_a.lanes)
    start = time.monotonic()
    run_cocotb(verilog_sources=[verilog], toplevel=TOPLEVEL, test_module=TEST_MODULE,
               build_dir=build / f"sim_{simulator}", extra_env=env, waves=waves, timeout_s=timeout_s,
               simulator=simulator)
    wall = time.monotonic() - start
    data = json.loads(results_file.read_text())
    got = data["log"]
    report = _report(got, expected, params_a=params_a, model_a=unpack(params_a.packed), model_b=model_b,
                     info=info_payload(params_a).hex(), data=data, wall=wall, clk_hz=clk_hz)
    report["simulator"] = simulator
    return report


def _report(got: dict, expected: dict, *, params_a, model_a, model_b, info, data, wall, clk_hz) -> dict:
    models = {"A": model_a, "B": model_b}
    mism = {"outputs": 0, "loads": 0, "status": 0, "info": int(got["info_raw"] != info)}
    runs, loads = [], []
    by_name = {p["name"]: p for p in expected["phases"]}
    # STATUS's cycle counters: the reference has no clock (it reports 0), so they are checked
    # apart: never decreasing, and a step's cycles counted once the device has run steps.
    mism["counters"], last_cycles = 0, 0
    for ph in got["phases"]:
        ref = by_name.get(ph["name"])
        counters = {k: ph["status"].pop(k) for k in ("cycles", "step_cycles")}
        if ref is not None:
            ref["status"].pop("cycles", None), ref["status"].pop("step_cycles", None)
        if counters["cycles"] < last_cycles or (ph["kind"] == "run" and not 0 < counters["step_cycles"]
                                                 <= counters["cycles"]):
            mism["counters"] += 1
        last_cycles = counters["cycles"]
        if ref is None or ph["status"] != ref["status"]:
            mism["status"] += 1
        if ph["kind"] == "run":
            want = golden.run(models[ph["model"]], np.asarray(ph["inputs"], dtype=np.int64)[:, None, :]).logits[:, 0]
            n = _count_output_mismatches(ph["outputs"], want)
            mism["outputs"] += n
            runs.append({"phase": ph["name"], "model": ph["model"], "steps": int(want.shape[0]), "mismatches": n})
        elif ph["kind"] == "load":
            want = (ref["result"], ref["command"]) if ref is not None else None
            differs = (ph["result"], ph["command"]) != want
            mism["loads"] += int(differs)
            loads.append({"image": ph["name"], "result": ph["result"], "command": ph["command"],
                          "expected": want[0] if want else None, "expected_command": want[1] if want else None})
    # Phases the device never reached (it stopped answering) count against it.
    missing = [p for p in expected["phases"] if p["name"] not in {g["name"] for g in got["phases"]}]
    for p in missing:
        if p["kind"] == "run":
            mism["outputs"] += int(np.asarray(p["outputs"]).size)
        elif p["kind"] == "load":
            mism["loads"] += 1
    cycles = int(data["cycles"])
    report = {
        "ok": got["error"] is None and not missing and not any(mism.values()),
        "mismatches": mism, "loads": loads, "runs": runs, "missing_phases": [p["name"] for p in missing],
        "leds": [{"phase": p["name"], "leds": p["probe"]["leds"]} for p in got["phases"]],
        "cycles": cycles, "simulated_seconds": cycles / clk_hz, "wall_seconds": wall,
        "sim_wall_seconds": data["wall_time_s"], "cycles_per_second": cycles / max(data["wall_time_s"], 1e-9),
        "transport": data["transport"], "framing_errors": data["framing_errors"], "error": got["error"],
        "hardware_signature": hardware_signature(params_a),
    }
    return report


# -- command line --------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.system_round_trip", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="quantized model file (model A, in the bitstream)")
    parser.add_argument("--lanes", type=int, required=True, help="lanes P")
    parser.add_argument("--out", required=True, help="directory for the build and report.json")
    parser.add_argument("--sequences", type=int, default=2, help="sequences per model (default 2)")
    parser.add_argument("--steps", type=int, default=6, help="steps per sequence (default 6)")
    parser.add_argument("--divisor", type=int, default=8, help="clock cycles per UART bit (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--timeout", type=float, default=None, help="wall-clock limit of the simulation (s)")
    args = parser.parse_args(argv)
    from egru_accel.quantize.random_model import random_inputs

    model_a = without_weight_min(QuantModel.load(args.model))
    params_a = CoreParams.from_model(model_a, lanes=args.lanes)
    x = random_inputs(model_a, steps=args.steps, sequences=args.sequences, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run_round_trip(params_a, negated_model(model_a), build_dir=out, sequences=x, divisor=args.divisor,
                            timeout_s=args.timeout)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'OK' if report['ok'] else 'FAILED'}: mismatches {report['mismatches']}, "
          f"{report['cycles']} cycles in {report['wall_seconds']:.1f} s; {out / 'report.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

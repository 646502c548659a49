"""Fit check: does a core of P lanes for a model fit a board's FPGA?

Counted from the design itself, before synthesis: the design (``EGRUSystem``, what the
board top level wraps) is converted to RTLIL and read back for

* **memories**: every ``memory`` with its width, depth, read and write ports, mapped the
  way yosys' ``memory_libmap`` maps it (the cheapest of block RAM, distributed RAM and flip-flops
  by the same costs, see :func:`map_memory`): iCE40 EBR in 256x16, 512x8, 1024x4 or 2048x2
  (one read port each), ECP5 DP16KD in 1024x18, 2048x9, 4096x4, ... (two ports) or 512x36
  (pseudo dual port), ECP5 distributed RAM (16x4 per DPR16X4, counted as logic);
* **multipliers**: every ``$mul`` split as yosys' ``mul2dsp`` splits it into 16x16 (iCE40
  SB_MAC16, products narrower than 11 bits stay in logic) or 18x18 (ECP5 MULT18X18D) blocks;
* **SPRAM and DSP instances** (``SB_SPRAM256KA``, ``SB_MAC16``, ``MULT18X18D``) as they are;
* **logic** from a measured baseline (``baselines.json``: logic cells / LUTs of the board top
  level at several lane counts, measured with ``python -m boards.calibrate`` on the digits
  model), plus 2 LUTs per distributed-RAM block on ECP5.

The block counts follow yosys' rules, not its every tie-break; the build's post-route
utilisation is the final word (``boards.build`` reports both).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

from .boards import RESOURCE_LABELS, get_board

__all__ = ["FitError", "FitReport", "MemoryShape", "Multiplier", "design_inventory", "apply_memory_policy",
           "map_memory", "multiplier_blocks", "estimate", "check_fit", "default_lanes", "system_rtlil",
           "load_baselines", "baseline_logic", "LANE_CANDIDATES"]

BASELINES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baselines.json")
#: Lane counts default_lanes() tries, in order.
LANE_CANDIDATES = tuple(1 << k for k in range(12))


class FitError(ValueError):
    """The design needs more of some resource than the board has.

    ``needed`` and ``available``: {resource: count}; ``over``: the resources short.
    """

    def __init__(self, message: str, *, needed: dict, available: dict, over: list):
        super().__init__(message)
        self.needed, self.available, self.over = needed, available, over


@dataclass(frozen=True)
class MemoryShape:
    """One memory of the design: ``depth`` words of ``width`` bits, its ports, and how many of
    its read ports are transparent for a write port (which block RAM emulates in logic)."""
    name: str
    width: int
    depth: int
    read_ports: int
    write_ports: int
    transparent_reads: int = 0
    style: str = ""          # "block", "distributed" or "logic" when an attribute forces it

    @property
    def rom(self) -> bool:
        return self.write_ports == 0


@dataclass(frozen=True)
class Multiplier:
    """One ``$mul``: operand widths and signedness (a constant operand already narrowed)."""
    name: str
    a_width: int
    b_width: int
    y_width: int
    a_signed: bool
    b_signed: bool


@dataclass
class FitReport:
    """What a design needs on a board, and whether it fits."""
    board: str
    lanes: int
    needed: dict
    available: dict
    memories: list = field(default_factory=list)     # [{name, width, depth, mapped_to, blocks}]
    multipliers: list = field(default_factory=list)  # [{name, a, b, blocks}]

    @property
    def over(self) -> list:
        return [r for r, n in self.needed.items() if n > self.available.get(r, 0)]

    @property
    def fits(self) -> bool:
        return not self.over

    def to_dict(self) -> dict:
        return {"board": self.board, "lanes": self.lanes,
                "resources": {r: {"needed": n, "available": self.available.get(r, 0)}
                              for r, n in self.needed.items()},
                "fits": self.fits, "memories": self.memories, "multipliers": self.multipliers}

    def table(self) -> str:
        """One line per resource: needed / available, marked where short."""
        lines = []
        for r, n in self.needed.items():
            have = self.available.get(r, 0)
            mark = "  <-- short" if n > have else ""
            lines.append(f"{RESOURCE_LABELS.get(r, r)} ({r}): needs {n}, has {have}{mark}")
        return "\n".join(lines)

    def raise_if_short(self, what: str):
        if self.fits:
            return
        short = "; ".join(f"{RESOURCE_LABELS.get(r, r)} ({r}): needs {self.needed[r]}, "
                          f"the board has {self.available.get(r, 0)}" for r in self.over)
        raise FitError(f"{what} does not fit the {self.board}: {short}. All resources:\n{self.table()}",
                       needed=dict(self.needed), available=dict(self.available), over=self.over)


# -- reading the design ------------------------------------------------------------------------

_MEMORY = re.compile(r"^\s*memory\s+(.*?)\s*(\\\S+|\$\S+)\s*$")
_CELL = re.compile(r"^\s*cell\s+(\S+)\s+(\S+)\s*$")
_PARAM = re.compile(r"^\s*parameter\s+\\(\S+)\s+(.*?)\s*$")
_CONNECT = re.compile(r"^\s*connect\s+\\(\S+)\s+(.*?)\s*$")
_CONST = re.compile(r"^(\d+)'([01xz]+)$")
_ATTR = re.compile(r'^\s*attribute\s+\\(\S+)\s+"?([^"]*)"?\s*$')
# yosys' memory style attributes and what their values select.
_STYLE_ATTRS = ("ram_style", "rom_style", "ramstyle", "romstyle", "syn_ramstyle", "syn_romstyle")
_STYLES = {"block": "block", "block_ram": "block", "ebr": "block", "bram": "block", "m4k": "block",
           "distributed": "distributed", "lutram": "distributed", "select_ram": "distributed",
           "logic": "logic", "registers": "logic", "auto": ""}


def _param_int(text: str) -> int:
    m = _CONST.match(text)
    if m:
        return int(m.group(2).replace("x", "0").replace("z", "0"), 2)
    return int(text)


def design_inventory(rtlil_text: str) -> dict:
    """Memories, multipliers and primitive instances of an RTLIL design (as Amaranth writes it:
    one module per instance, so every module is counted once).

    Returns ``{"memories": [MemoryShape], "multipliers": [Multiplier], "instances": {type: count}}``.
    """
    memories, ports, multipliers, instances = {}, {}, [], {}
    module = ""
    cell = None
    attrs = {}      # attributes seen since the last statement: they belong to the next one

    def finish(cell):
        if cell is None:
            return
        ctype, name, params, conns = cell
        if ctype in ("$memrd_v2", "$memrd", "$memwr_v2", "$memwr"):
            key = (module, params["MEMID"].strip('"').replace("\\\\", "\\"))
            entry = ports.setdefault(key, {"rd": 0, "wr": 0, "trans": 0})
            if ctype.startswith("$memrd"):
                entry["rd"] += 1
                if _param_int(params.get("TRANSPARENCY_MASK", "0")) != 0 or params.get("TRANSPARENT", "0") == "1":
                    entry["trans"] += 1
            else:
                entry["wr"] += 1
        elif ctype == "$mul":
            aw, bw = int(params["A_WIDTH"]), int(params["B_WIDTH"])
            asg, bsg = params["A_SIGNED"] == "1", params["B_SIGNED"] == "1"
            widths = []
            for port, width, signed in (("A", aw, asg), ("B", bw, bsg)):
                const = _CONST.match(conns.get(port, ""))
                if const is None:
                    widths.append(width)
                    continue
                value = int(const.group(2).replace("x", "0").replace("z", "0"), 2)
                if signed and value >> (width - 1):
                    value -= 1 << width
                if value == 0 or (value > 0 and value & (value - 1) == 0):
                    widths = None   # zero or a power of two: a shift, no multiplier
                    break
                widths.append(abs(value).bit_length() + (1 if signed else 0))
            if widths is not None:
                multipliers.append(Multiplier(name=f"{module}.{name}", a_width=widths[0], b_width=widths[1],
                                              y_width=int(params["Y_WIDTH"]), a_signed=asg, b_signed=bsg))
        elif not ctype.startswith("$"):
            prim = ctype.lstrip("\\")
            instances[prim] = instances.get(prim, 0) + 1

    for line in rtlil_text.splitlines():
        s = line.strip()
        if cell is None:
            a = _ATTR.match(line)
            if a:
                attrs[a.group(1)] = a.group(2)
                continue
        if s.startswith("module "):
            module = s.split(None, 1)[1].lstrip("\\")
            attrs = {}
            continue
        m = _MEMORY.match(line)
        if m and cell is None:
            words = m.group(1).split()
            width = int(words[words.index("width") + 1]) if "width" in words else 1
            size = int(words[words.index("size") + 1]) if "size" in words else 1
            memories[(module, m.group(2))] = (width, size, {k: v for k, v in attrs.items() if k in _STYLE_ATTRS})
            attrs = {}
            continue
        attrs = {}
        m = _CELL.match(line)
        if m:
            cell = (m.group(1), m.group(2), {}, {})
            continue
        if cell is not None:
            if s == "end":
                finish(cell)
                cell = None
                continue
            m = _PARAM.match(line)
            if m:
                cell[2][m.group(1)] = m.group(2)
                continue
            m = _CONNECT.match(line)
            if m:
                cell[3][m.group(1)] = m.group(2)
    shapes = []
    for (mod, memid), (width, size, style_attrs) in memories.items():
        p = ports.get((mod, memid), {"rd": 0, "wr": 0, "trans": 0})
        if p["rd"] == 0:
            continue  # never read: synthesis removes it
        # As yosys reads them: a ROM's rom_style first, else the ram_style family.
        order = (("rom_style", "romstyle", "syn_romstyle") if p["wr"] == 0 else ()) + \
            ("ram_style", "ramstyle", "syn_ramstyle")
        style = next((_STYLES.get(style_attrs[k].lower(), "") for k in order if k in style_attrs), "")
        shapes.append(MemoryShape(name=f"{mod}.{memid.lstrip(chr(92))}", width=width, depth=size,
                                  read_ports=p["rd"], write_ports=p["wr"], transparent_reads=p["trans"],
                                  style=style))
    return {"memories": shapes, "multipliers": multipliers, "instances": instances}


def apply_memory_policy(board, rtlil_text: str) -> tuple[str, list[str]]:
    """``rtlil_text`` with the block-RAM style attributes removed from memories of at most
    ``board.small_memory_bits`` bits (see :class:`boards.boards.Board`); also the names of the
    memories changed."""
    board = get_board(board)
    if not board.small_memory_bits:
        return rtlil_text, []
    out, pending, changed = [], [], []
    module = ""
    for line in rtlil_text.splitlines(keepends=True):
        s = line.strip()
        if s.startswith("module "):
            module = s.split(None, 1)[1].lstrip("\\")
        a = _ATTR.match(line)
        if a:
            pending.append((line, a.group(1), a.group(2)))
            continue
        m = _MEMORY.match(line)
        if m:
            words = m.group(1).split()
            width = int(words[words.index("width") + 1]) if "width" in words else 1
            size = int(words[words.index("size") + 1]) if "size" in words else 1
            small = width * size <= board.small_memory_bits
            kept = [p for p in pending
                    if not (small and p[1] in _STYLE_ATTRS and _STYLES.get(p[2].lower()) == "block")]
            if len(kept) != len(pending):
                changed.append(f"{module}.{m.group(2).lstrip(chr(92))}")
            pending = kept
        out.extend(p[0] for p in pending)
        pending = []
        out.append(line)
    out.extend(p[0] for p in pending)
    return "".join(out), changed


# -- mapping memories (yosys memory_libmap's costs) ------------------------------------------

# Costs from yosys' techlibs (ice40/brams.txt, lattice/brams_16kd.txt, lattice/lutrams_trellis.txt)
# and memory_libmap (flip-flops cost 1 per bit of RAM, 1/16 per bit of ROM; logic that emulates
# a port feature costs 2 per point of score).
_COST_EBR, _COST_DP16KD, _COST_DPR16X4 = 64, 128, 4
_LOGIC_RAM, _LOGIC_ROM, _EMU_FACTOR = 1.0, 1.0 / 16, 2
_ICE40_GEOMETRIES = ((256, 16), (512, 8), (1024, 4), (2048, 2))
_DP16KD_GEOMETRIES = ((1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))


def _ceil(a, b):
    return -(-a // b)


def _pad(width: int, unit: int) -> int:
    return _ceil(width, unit) * unit


def _block_cost(cost, blocks, mult_a, mem: MemoryShape, repl_port, *, synchronous=True):
    # memory_libmap: block cost, plus 0.5 per bit of read multiplexer and per write-enable
    # decoder output when the depth spans several blocks, plus the emulation in logic that a
    # synchronous block RAM needs: transparency per transparent read port, and read-first
    # behaviour (per write port) when a read port is not transparent. An asynchronous
    # distributed RAM with its output register behaves either way by itself.
    c = cost * blocks * repl_port
    c += 0.5 * (mult_a - 1) * mem.width * mem.read_ports
    if mult_a > 1:
        c += 0.5 * mult_a * mem.write_ports
    # Emulation score (memory_libmap's score_emu_ports, weighted 2): 1 per read port, 3 per
    # transparency emulated; read-first emulation 3 per write port, and it makes every
    # non-transparent read port transparent-emulated too.
    score = mem.read_ports + 3 * mem.transparent_reads
    opaque = mem.read_ports - mem.transparent_reads
    if synchronous and mem.write_ports and opaque:
        score += 3 * mem.write_ports + 3 * opaque
    return c + _EMU_FACTOR * score


def map_memory(family: str, mem: MemoryShape) -> dict:
    """How yosys maps ``mem`` on ``family``: ``{"kind": "EBR"|"DP16KD"|"LUTRAM"|"FF", "blocks": n,
    "geometry": "DxW"}`` (LUTRAM blocks are DPR16X4, FF blocks are bits)."""
    bits = mem.width * mem.depth
    options = [(bits * (_LOGIC_ROM if mem.rom else _LOGIC_RAM), "FF", bits, "")]
    if family == "ice40":
        repl_port = mem.read_ports   # one read port per EBR
        for d, w in _ICE40_GEOMETRIES:
            mult_a = _ceil(mem.depth, d)
            blocks = mult_a * _ceil(mem.width, w)
            options.append((_block_cost(_COST_EBR, blocks, mult_a, mem, repl_port), "EBR", blocks * repl_port,
                            f"{d}x{w}"))
        # With byte enables (16-bit writes only) the bits of several depth ranges share blocks.
        mult_a = _ceil(mem.depth, 256)
        blocks = _ceil(mult_a * mem.width, 16)
        options.append((_block_cost(_COST_EBR, blocks, mult_a, mem, repl_port), "EBR", blocks * repl_port,
                        "256x16"))
    elif family == "ecp5":
        # DP16KD: two ports per block, each read or write (a ROM's two reads share one block).
        repl_port = _ceil(mem.read_ports, 2 - min(1, mem.write_ports))
        for d, w in _DP16KD_GEOMETRIES:
            mult_a = _ceil(mem.depth, d)
            blocks = _ceil(mult_a * _pad(mem.width, min(9, w)), w)
            options.append((_block_cost(_COST_DP16KD, blocks, mult_a, mem, repl_port), "DP16KD",
                            blocks * repl_port, f"{d}x{w}"))
        # PDPW16KD: one 36-bit write port, one read port.
        if mem.write_ports <= 1:
            mult_a = _ceil(mem.depth, 512)
            blocks = _ceil(mult_a * _pad(mem.width, 9), 36)
            options.append((_block_cost(_COST_DP16KD, blocks, mult_a, mem, mem.read_ports), "DP16KD",
                            blocks * mem.read_ports, "512x36"))
        if not mem.rom and mem.write_ports <= 1:
            # DPR16X4: 16 words x 4 bits, one write port and one asynchronous read port.
            mult_a = _ceil(mem.depth, 16)
            blocks = mult_a * _ceil(mem.width, 4)
            cost = _block_cost(_COST_DPR16X4, blocks, mult_a, mem, mem.read_ports, synchronous=False)
            options.append((cost, "LUTRAM", blocks * mem.read_ports, "16x4"))
    else:
        raise ValueError(f"unknown FPGA family {family!r}")
    # A style attribute restricts the choice to its kind (yosys falls back if none can map it).
    wanted = {"block": ("EBR", "DP16KD"), "distributed": ("LUTRAM",), "logic": ("FF",)}.get(mem.style)
    if wanted and any(o[1] in wanted for o in options):
        options = [o for o in options if o[1] in wanted]
    cost, kind, blocks, geometry = min(options, key=lambda o: o[0])
    return {"kind": kind, "blocks": blocks, "geometry": geometry}


def multiplier_blocks(family: str, mul: Multiplier) -> int:
    """Hard multipliers yosys' ``mul2dsp`` makes of ``mul``: operands split into chunks of the
    block width (16 on iCE40, 18 on ECP5); on iCE40 a piece under 2x2 bits or with a product
    under 11 bits stays in logic."""
    if family == "ice40":
        max_w, min_a, min_b, min_y = 16, 2, 2, 11
    elif family == "ecp5":
        max_w, min_a, min_b, min_y = 18, 2, 2, 0

    def count(a, b, y):
        if a < b:
            a, b = b, a
        if a < min_a or b < min_b or y < min_y:
            return 0
        if a > max_w:
            n = (a - max_w + max_w - 1) // max_w
            last = a - n * max_w
            return n * count(max_w, b, min(y, b + max_w)) + count(last, b, b + last)
        if b > max_w:
            n = (b - max_w + max_w - 1) // max_w
            last = b - n * max_w
            return n * count(a, max_w, min(y, a + max_w)) + count(a, last, a + last)
        return 1

    return count(mul.a_width, mul.b_width, mul.y_width)


# -- baselines and the whole check -------------------------------------------------------------

def load_baselines(path: str = BASELINES) -> dict:
    with open(path) as f:
        return json.load(f)


def baseline_logic(base: dict, lanes: int) -> float:
    """Logic of ``lanes`` lanes from the measured points: linear between them, the nearest
    segment's slope outside them (a single point scales with the lanes)."""
    points = sorted((p["lanes"], p["logic"]) for p in base["points"])
    if len(points) == 1:
        return points[0][1] * lanes / points[0][0]
    # The first segment that reaches ``lanes``, else the last one.
    k = next((i for i in range(len(points) - 1) if lanes <= points[i + 1][0]), len(points) - 2)
    (p0, l0), (p1, l1) = points[k], points[k + 1]
    return l0 + (l1 - l0) * (lanes - p0) / (p1 - p0)


def estimate(board, inventory: dict, lanes: int, *, baselines: dict | None = None, core: str = "v1") -> FitReport:
    """Resources a design needs on ``board`` (:func:`design_inventory` of its RTLIL, ``lanes``
    lanes); ``core``: ``"v1"``, or ``"v2"`` (a capacity build: its own logic baseline)."""
    board = get_board(board)
    baselines = load_baselines() if baselines is None else baselines
    key = board.family if core == "v1" else f"{board.family}_{core}"
    if key not in baselines:
        raise ValueError(f"no logic baseline for core {core} on {board.family} in baselines.json "
                         f"(python -m boards.calibrate --core {core} --family {board.family} measures one)")
    base = baselines[key]
    ram, dsp, logic = board.ram_resource, board.dsp_resource, board.logic_resource
    needed = {logic: 0, ram: 0, dsp: 0}
    if board.family == "ice40":
        needed["ICESTORM_SPRAM"] = 0
    memories, lutram = [], 0
    for mem in inventory["memories"]:
        mapped = map_memory(board.family, mem)
        memories.append({"name": mem.name, "width": mem.width, "depth": mem.depth,
                         "read_ports": mem.read_ports, "mapped_to": mapped["kind"],
                         "geometry": mapped["geometry"], "blocks": mapped["blocks"]})
        if mapped["kind"] in ("EBR", "DP16KD"):
            needed[ram] += mapped["blocks"]
        elif mapped["kind"] == "LUTRAM":
            lutram += mapped["blocks"]
    multipliers = []
    for mul in inventory["multipliers"]:
        n = multiplier_blocks(board.family, mul)
        multipliers.append({"name": mul.name, "a": mul.a_width, "b": mul.b_width, "blocks": n})
        needed[dsp] += n
    for prim, n in inventory["instances"].items():
        if prim == "SB_SPRAM256KA":
            needed["ICESTORM_SPRAM"] = needed.get("ICESTORM_SPRAM", 0) + n
        elif prim in ("SB_MAC16", "MULT18X18D"):
            needed[dsp] += n
        elif prim in ("SB_RAM40_4K", "DP16KD"):
            needed[ram] += n
    # Logic: the measured baseline; distributed RAM adds its LUTs (2 per DPR16X4) on top.
    needed[logic] = int(math.ceil(baseline_logic(base, lanes) + 2 * lutram))
    available = {r: board.resources.get(r, 0) for r in needed}
    return FitReport(board=board.name, lanes=lanes, needed=needed, available=available,
                     memories=memories, multipliers=multipliers)


def system_rtlil(board, params, *, clk_hz: float | None = None) -> str:
    """RTLIL of the ``EGRUSystem`` a board top level wraps (what the fit is checked on)."""
    from amaranth.back import rtlil
    from egru_accel.hw.system import EGRUSystem
    board = get_board(board)
    clk_hz = board.default_mhz * 1e6 if clk_hz is None else clk_hz
    system = EGRUSystem(params.replace_config(clk_hz=clk_hz, weight_ram=board.weight_ram))
    return rtlil.convert(system, name="system", emit_src=False)


def check_fit(board, params, *, clk_hz: float | None = None, rtlil_text: str | None = None,
              baselines: dict | None = None) -> FitReport:
    """:func:`estimate` for the system of ``params`` on ``board``; raises :class:`FitError`
    (naming every short resource with needed and available counts) if it does not fit."""
    board = get_board(board)
    text = system_rtlil(board, params, clk_hz=clk_hz) if rtlil_text is None else rtlil_text
    text, _ = apply_memory_policy(board, text)
    report = estimate(board, design_inventory(text), params.lanes, baselines=baselines)
    report.raise_if_short(f"the model with {params.lanes} lane{'s' if params.lanes != 1 else ''}")
    return report


#: The default lane count keeps the design under this many logic cells (LC / LUT4): a
#: build of a few minutes here that meets the default clock. Measured with the digits model
#: on the ULX3S-85F (this 2-core machine): 32 lanes fit (49000 LUT4), but nextpnr had not
#: finished after 40 minutes; at 8 lanes (14000 LUT4) its router still had 24000 overused
#: wires after 16 minutes, at a pre-route 44 MHz for 50; 4 lanes (11000 LUT4) build in a few
#: minutes and meet 50 MHz (the budget leaves them 1000 cells of growth). ``--lanes`` goes past it.
DEFAULT_LOGIC_BUDGET = 13000


def default_lanes(board, model, *, baselines: dict | None = None) -> int:
    """The largest P in 1, 2, 4, 8, ... (at most the smallest layer) whose core fits ``board``
    and, beyond one lane, needs at most :data:`DEFAULT_LOGIC_BUDGET` logic cells.

    Raises :class:`FitError` (the figures for one lane) when not even one lane fits.
    """
    from egru_accel.hw.params import CoreParams
    from egru_accel.quantize.model import QuantModel
    board = get_board(board)
    if not isinstance(model, QuantModel):
        raise TypeError(f"model must be a QuantModel, not {type(model).__name__}")
    smallest = min(layer.hidden_size for layer in model.layers)
    best = None
    for lanes in LANE_CANDIDATES:
        if lanes > smallest:
            break
        params = CoreParams.from_model(model, lanes=lanes)
        try:
            report = check_fit(board, params, baselines=baselines)
        except FitError:
            if best is None:
                raise
            break   # needs only grow with the lanes
        if best is not None and report.needed.get(board.logic_resource, 0) > DEFAULT_LOGIC_BUDGET:
            break
        best = lanes
    return best

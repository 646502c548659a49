"""The protocol bridge: executes the host protocol (docs/protocol.md) between UART byte
streams and the EGRU core.

::

    rx bytes --> receiver (hunt 0xA5, header, payload into the request buffer, CRC16 check)
                    |
                 execute: INFO, STATUS, START, LOAD_BEGIN/DATA/END (streaming image check,
                    |      words written through cfg), RUN (inputs from the buffer to core_i)
                    v
    tx bytes <-- transmitter (0x5A, status, length, payload, CRC16; RUN outputs streamed
                 from core_o as the core produces them, sign-extended to i32)

For core v1 its behaviour is byte for byte that of :class:`firmware.reference.ReferenceDevice`
(the specification; ``tests/test_bridge.py`` compares them): for any request bytes, the same
response bytes. For a capacity build of core v2 (:meth:`BridgeSpec.for_capacity`, docs/protocol.md
"Capacity builds") its image check and writes are :class:`firmware.image.ImageChecker`'s
(``tests/test_capacity_image.py``), and the whole system answers the host driver as the golden
model does (``tests/test_capacity_system_cocotb.py``).

Design for a small footprint (iCE40 logic cells are scarce):

* one request buffer (a ``MAX_PAYLOAD`` x 8 block RAM): a request executes only after its
  CRC16 matched; there is no response buffer;
* the CRCs are computed bit-serially, one bit per cycle (8 cycles per byte, well inside
  the >= 40 cycles a UART byte takes), by one engine shared by the request CRC16, the
  response CRC16 and the image CRC32 (never needed at the same time);
* the image is checked as it streams in (:class:`firmware.image.ImageChecker` is the
  bit-exact model): the expected header bytes and the INFO payload are a small ROM, the
  per-section word counts a memory of one entry per section, each section's constants
  (memory, part, word bits, depth) a case of the section index, and a capacity build's
  run-time register limits a case of the word index. The one wide register is the word
  being assembled for ``cfg``.

Stage prefixes: ``c_`` CRC engine, ``h_`` request header, ``t_`` transmitter, ``l_`` load,
``k_`` image check, ``f_`` RUN input feeder.

Requests must come one at a time: the bridge does not read ``rx`` while it executes a
request or sends its response (on a real UART, bytes sent meanwhile overrun the receiver).
There is no inter-byte timeout: a host that stopped in the middle of a frame must complete
it (the device answers once it has all the bytes it expects) before a fresh frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from egru_accel.firmware.capacity_image import capacity_image_layout, capacity_info
from egru_accel.firmware.image import FREE, ImageLayout, image_layout, info_payload
from egru_accel.firmware.protocol import (LOAD_WRITE, MAX_IMAGE, MAX_PAYLOAD, MAX_RESPONSE_PAYLOAD, REQUEST_SOF,
                                          RESPONSE_SOF, STATUS_FORMAT, Command, Status)
from egru_accel.quantize.capacity import Capacity
from egru_accel.quantize.formats import unsigned_bits_for
from egru_accel.quantize.memory import LOADABLE
from egru_accel.quantize.shared_rows import LoadMemory, SharedRowImage

from .construct import checked_construction
from .core import ControlSignature, StatusSignature
from .lane import cfg_addr_shape, cfg_data_bits
from .params import CoreParams

__all__ = ["Bridge", "BridgeSpec", "WriteSignature"]

# Transmitter phases.
T_SOF, T_STATUS, T_LEN0, T_LEN1, T_PAY, T_CRC0, T_CRC1 = range(7)
# Image check phases (see firmware.image.ImageChecker).
K_FIXED, K_TABLE, K_DATA, K_TRAILER, K_END = range(5)
# ROM codes of the flag a mismatching fixed-header byte raises (FREE: none).
_KIND_CODE = {"magic": 0, "version": 1, "signature": 2, "section": 3, FREE: 4}
#: Reflected CRC32 polynomial (zlib) and CCITT CRC16 polynomial.
_CRC32_POLY, _CRC16_POLY = 0xEDB88320, 0x1021
_CRC32_RESIDUE = 0xDEBB20E3


class WriteSignature(wiring.Signature):
    """The bridge's memory writes: when ``valid`` (and ``ready``, if the core has one),
    ``data`` goes to word ``addr`` of memory ``mem``, part ``lane`` (a section's memory and
    part, :class:`~egru_accel.firmware.image.ImageLayout`). Without ``ready`` the bridge writes
    only while the core's ``busy`` is low (core v1's ``cfg``)."""
    def __init__(self, *, mem, lane, addr, data: int, ready: bool):
        members = {"valid": Out(1), "mem": Out(mem), "lane": Out(lane), "addr": Out(addr), "data": Out(data)}
        if ready:
            members["ready"] = In(1)
        super().__init__(members)


@dataclass(frozen=True, kw_only=True)
class BridgeSpec:
    """What a bridge serves: its INFO payload, what an image must be, RUN's framing and the
    core's write port (:meth:`for_core` for core v1, :meth:`for_capacity` for a capacity build
    of core v2).

    ``inputs``/``outputs``: values per RUN step, or at most that many when ``run_shape`` is
    set: ``(mem, inputs address, outputs address)``, the words of a load that give RUN's sizes
    (a capacity build's run-time registers), which start as ``reset_shape`` (the model in the
    bitstream's, or (0, 0)). ``input_bits``: bits of an input value (``ceil(bits / 8)`` bytes
    each in RUN); ``output_bits``: of an output (sent as i32). ``model_at_reset``: the
    bitstream holds a model (else RUN answers NO_MODEL until a load succeeds).
    ``write``: the :class:`WriteSignature` of the core's write port."""
    info: bytes
    image: ImageLayout
    input_bits: int
    output_bits: int
    inputs: int
    outputs: int
    model_at_reset: bool
    write: WriteSignature
    run_shape: tuple[int, int, int] | None = None
    reset_shape: tuple[int, int] = (0, 0)

    @classmethod
    def for_core(cls, params: CoreParams) -> "BridgeSpec":
        """The bridge of an :class:`~hw.core.EGRUCore` built from ``params`` (its ``cfg``)."""
        lay = params.layout
        return cls(info=info_payload(lay), image=image_layout(lay), input_bits=lay.formats.input_bits,
                   output_bits=lay.readout_bits, inputs=lay.input_size, outputs=lay.outputs,
                   model_at_reset=params.config.model_at_reset,
                   write=WriteSignature(mem=range(len(LOADABLE)), lane=range(max(2, params.lanes)),
                                        addr=cfg_addr_shape(lay), data=cfg_data_bits(lay), ready=False))

    @classmethod
    def for_capacity(cls, capacity: Capacity, *, at_reset: SharedRowImage | None = None,
                     output_bits: int = 32) -> "BridgeSpec":
        """The bridge of a core v2 built for ``capacity`` (its ``load`` port through
        :class:`~hw.capacity_system.LoadAdapter`); ``at_reset``: the placed model its memories
        start with (``None``: none)."""
        if not isinstance(capacity, Capacity):
            raise TypeError(f"capacity must be a Capacity, not {type(capacity).__name__}")
        image = capacity_image_layout(capacity)
        names = capacity.layout.param_names()
        widest = max(bits for _, _, bits, _ in image.sections)
        deepest = max(depth for _, _, _, depth in image.sections)
        reset = (0, 0) if at_reset is None else (at_reset.input_size, at_reset.outputs)
        return cls(info=capacity_info(capacity), image=image, input_bits=capacity.formats.input_bits,
                   output_bits=output_bits, inputs=capacity.inputs, outputs=capacity.outputs,
                   model_at_reset=at_reset is not None,
                   write=WriteSignature(mem=range(len(LoadMemory)), lane=range(max(2, capacity.lanes)),
                                        addr=range(max(2, deepest)), data=widest, ready=True),
                   run_shape=(int(LoadMemory.PARAMS), names.index("inputs"), names.index("outputs")),
                   reset_shape=reset)


class Bridge(wiring.Component):
    """Protocol bridge between UART byte streams and a core.

    Args:
        params: What the bridge serves (:class:`BridgeSpec`), or core v1's parameters
            (:class:`~hw.params.CoreParams`, for :meth:`BridgeSpec.for_core`): the INFO payload,
            RUN framing and what a model image must match. A spec's ``model_at_reset``:
            ``True`` when the bitstream initialises the core's memories with a model (block
            RAM); ``False`` when it cannot (iCE40 SPRAM weights): then RUN answers NO_MODEL
            until a load succeeds. With ``run_shape`` (a capacity build), RUN's sizes are the
            loaded model's, and RUN without a model answers NO_MODEL whatever its length.

    Members:
        rx: request bytes (from :class:`~hw.uart.UARTRx`).
        tx: response bytes (to :class:`~hw.uart.UARTTx`).
        core_i, core_o, core_ctl, core_status, core_cfg: to and from the core's ``i``,
            ``o``, ``ctl``, ``status`` and ``cfg`` (its memory writes, :class:`WriteSignature`).
        model_ok: a valid model is loaded (RUN allowed).
        loading: a load is in progress (between LOAD_BEGIN and LOAD_END).
        error: the last response's status was not OK.
    """

    def __init__(self, params: BridgeSpec | CoreParams):
        with checked_construction(self):
            spec = self._check(params)
        self.params = params
        self.spec = spec
        self.model_at_reset = model_at_reset = spec.model_at_reset
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "core_i": Out(stream.Signature(signed(spec.input_bits))),
            "core_o": In(stream.Signature(signed(spec.output_bits))),
            "core_ctl": Out(ControlSignature()),
            "core_status": In(StatusSignature()),
            "core_cfg": Out(spec.write),
            "model_ok": Out(1, init=int(model_at_reset)),
            "loading": Out(1),
            "error": Out(1),
        })

    @staticmethod
    def _check(params) -> BridgeSpec:
        if isinstance(params, CoreParams):
            spec = BridgeSpec.for_core(params)
        elif isinstance(params, BridgeSpec):
            spec = params
        else:
            raise TypeError(f"params must be CoreParams or a BridgeSpec, not {type(params).__name__}")
        nb = (spec.input_bits + 7) // 8
        if spec.inputs * nb > MAX_PAYLOAD:
            raise ValueError(f"one input vector takes {spec.inputs * nb} bytes, more than a request "
                             f"payload ({MAX_PAYLOAD} bytes): RUN could never be sent")
        if spec.outputs * 4 > MAX_RESPONSE_PAYLOAD:
            raise ValueError(f"one step's outputs take {spec.outputs * 4} bytes, more than a response "
                             f"payload ({MAX_RESPONSE_PAYLOAD} bytes)")
        if spec.output_bits > 32:
            raise ValueError(f"outputs of {spec.output_bits} bits do not fit RUN's i32")
        return spec

    def elaborate(self, platform):
        m = Module()
        spec = self.spec
        layout = spec.image
        info = spec.info
        S = len(layout.sections)                      # the loadable memories
        F = len(layout.fixed)
        mem_bits = [bits for _, _, bits, _ in layout.sections]
        mem_bytes = [(bits + 7) // 8 for bits in mem_bits]
        mem_depth = [depth for _, _, _, depth in layout.sections]
        W = unsigned_bits_for(max(mem_depth))          # word counts and word addresses
        B = unsigned_bits_for(layout.max_length)       # image offsets
        max_bytes = max(mem_bytes)
        input_bits = spec.input_bits
        nb = (input_bits + 7) // 8
        max_elem_bytes = spec.inputs * nb              # request bytes per RUN step (at most)
        variable = spec.run_shape is not None
        # RUN's sizes: constants, or (a capacity build) the loaded model's run-time registers.
        if variable:
            run_inputs = Signal(range(spec.inputs + 1), init=spec.reset_shape[0])
            run_outputs = Signal(range(spec.outputs + 1), init=spec.reset_shape[1])
            elem_last = Signal(range(max_elem_bytes))
            out_bytes = Signal(range(4 * spec.outputs + 1))
            m.d.comb += [elem_last.eq(run_inputs * nb - 1), out_bytes.eq(run_outputs * 4)]
        else:
            elem_last, out_bytes = max_elem_bytes - 1, spec.outputs * 4
        may_overflow = (MAX_PAYLOAD // nb) * 4 * spec.outputs > MAX_RESPONSE_PAYLOAD if variable else \
            (MAX_PAYLOAD // max_elem_bytes) * out_bytes > MAX_RESPONSE_PAYLOAD

        rx, tx = self.rx, self.tx
        busy = self.core_status.busy

        # -- memories ----------------------------------------------------------------------------
        # Request payload buffer (one block RAM). Written by the receiver, read at `idx`.
        m.submodules.buf = buf = Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        buf_w = buf.write_port()
        buf_r = buf.read_port(transparent_for=())
        # Constants (in logic, ~90 LUTs: on the iCE40 UP5K at one lane every block RAM is taken
        # by the core, and logic cells are not the scarce resource there): the INFO payload backwards at
        # 1 .. len(info) (addressed by the remaining response length), then from `hdr_base` the
        # expected fixed image header with, per byte, the flag its mismatch raises.
        hdr_base = 1 << len(info).bit_length()
        rom_init = [0] + list(reversed(info)) + [0] * (hdr_base - len(info) - 1)
        rom_init += [b | _KIND_CODE[k] << 8 for b, k in zip(layout.fixed, layout.fixed_kinds)]
        m.submodules.rom = rom = Memory(shape=11, depth=len(rom_init), init=rom_init,
                                        attrs={"ram_style": "logic", "rom_style": "logic"})
        rom_r = rom.read_port()
        # Word count of each section, from the section table (in logic too, for the same reason).
        m.submodules.counts = counts = Memory(shape=W, depth=max(2, S), init=[], attrs={"ram_style": "logic"})
        cnt_w = counts.write_port()
        cnt_r = counts.read_port(transparent_for=())

        # -- CRC engine (c_): one bit per cycle, CRC16 (MSB first) or reflected CRC32 ---------------
        # It reads bit c_bits-1 of `c_in`, the byte its user presents, which stays put until the
        # user takes it once `c_done` (stream payloads are stable until the transfer): no byte
        # register and no load multiplexer.
        c_bits = Signal(range(9))
        c_in = Signal(8)
        c_sel32 = Signal()
        c_done = Signal()       # the presented byte has been through the CRC
        crc16 = Signal(16, init=0xFFFF)
        crc32 = Signal(32, init=0xFFFFFFFF)
        c_busy = Signal()
        c_bit = Signal()
        m.d.comb += [c_busy.eq(c_bits != 0), c_bit.eq(c_in.bit_select((c_bits - 1)[:3], 1))]
        with m.If(c_busy):
            m.d.sync += c_bits.eq(c_bits - 1)
            with m.If(c_bits == 1):
                m.d.sync += c_done.eq(1)
            with m.If(c_sel32):
                m.d.sync += crc32.eq((crc32 >> 1) ^ Mux(crc32[0] ^ c_bit, _CRC32_POLY, 0))
            with m.Else():
                m.d.sync += crc16.eq((crc16 << 1)[:16] ^ Mux(crc16[15] ^ c_bit, _CRC16_POLY, 0))

        def crc_byte(byte, sel32: bool, valid=1):
            """Run ``byte`` (while ``valid``) through the CRC; usable once ``c_done``."""
            # CRC16 takes bits MSB first, CRC32 LSB first: reverse the byte for CRC32.
            m.d.comb += c_in.eq(Cat(*[byte[7 - i] for i in range(8)]) if sel32 else byte)
            with m.If(valid & ~c_busy & ~c_done):
                m.d.sync += [c_bits.eq(8), c_sel32.eq(sel32)]

        def crc_taken():
            m.d.sync += c_done.eq(0)

        # -- request state -------------------------------------------------------------------------
        cmd = Signal(8)
        p_len = Signal(range(MAX_PAYLOAD + 1))      # payload bytes of the request
        h_idx = Signal(2)                           # header / CRC byte counter
        h_crc_lo_ok = Signal()
        h_elem = Signal(range(max(2, max_elem_bytes)))  # byte within a RUN input vector
        # Buffer index: receiver write address, then the execution's read address. The buffer's
        # read data belongs to `idx` unless idx changed in the previous cycle (`rd_wait`).
        idx = Signal(range(MAX_PAYLOAD + 1))
        rd_wait = Signal()
        m.d.sync += rd_wait.eq(0)

        def set_idx(value):
            m.d.sync += [idx.eq(value), rd_wait.eq(1)]

        m.d.comb += [buf_r.addr.eq(idx), buf_w.addr.eq(idx), buf_w.data.eq(rx.payload)]
        rdata = buf_r.data

        # -- response state ------------------------------------------------------------------------
        r_status = Signal(8)
        t_len = Signal(16)      # payload length; counts down while the payload goes out
        t_over = Signal()       # RUN: the response would exceed MAX_RESPONSE_PAYLOAD
        t_phase = Signal(range(7))
        last_error = Signal(8)
        # One adder for t_len: + out_bytes per input vector received, - 1 per payload byte sent.
        t_step = Signal(16)
        t_step_sum = Signal(17)
        m.d.comb += t_step_sum.eq(t_len + t_step)

        def respond(status):
            """Send a response with ``status`` (an int or a Signal); the receiver hunts again
            afterwards. The payload length follows from the command (see T_SOF below)."""
            m.d.sync += [r_status.eq(status), t_phase.eq(T_SOF)]
            m.next = "RESPOND"

        # -- load and image check state -------------------------------------------------------------
        l_mode = Signal()            # 1: write mode
        l_rem = Signal(24)           # image bytes still announced (at most MAX_IMAGE)
        l_big = Signal()             # LOAD_BEGIN announced more than MAX_IMAGE: length byte 3 != 0
        assert MAX_IMAGE == (1 << len(l_rem)) - 1
        k_phase = Signal(range(5))
        k_pos = Signal(range(F + 1))
        k_magic, k_version, k_sig, k_section, k_capacity = (
            Signal(name=f"k_flag_{n}") for n in ("magic", "version", "signature", "section", "capacity"))
        k_s = Signal(range(S + 1))   # section
        k_j = Signal(range(12))      # byte of the section entry; trailer byte
        k_n = Signal(W)              # the entry's word count
        k_off = Signal(B)            # running data offset
        k_mul = Signal(range(max_bytes + 1))
        k_w = Signal(W)              # word of the section
        k_b = Signal(range(max(2, max_bytes)))  # byte of the word
        k_word = Signal(max(mem_bits))
        no_flags = Signal()
        m.d.comb += no_flags.eq(~(k_magic | k_version | k_sig | k_section | k_capacity))
        # This section's constants.
        k_mem, k_lane = Signal.like(self.core_cfg.mem), Signal.like(self.core_cfg.lane)
        s_bits, s_bytes, s_depth = Signal(16), Signal(range(max_bytes + 1)), Signal(W)
        with m.Switch(k_s):
            for k, (mem, lane, bits, depth) in enumerate(layout.sections):
                with m.Case(k):
                    m.d.comb += [k_mem.eq(mem), k_lane.eq(lane), s_bits.eq(bits), s_bytes.eq(mem_bytes[k]),
                                 s_depth.eq(depth)]
        over_flag = k_capacity if layout.over_kind == "capacity" else k_section
        # A word of a section with limits (a capacity build's run-time registers) outside them.
        k_word_bad = Signal()
        for sec, limits in layout.word_limits:
            with m.If(k_s == sec):
                with m.Switch(k_w):
                    for a, (lo, hi) in enumerate(limits):
                        with m.Case(a):
                            m.d.comb += k_word_bad.eq((k_word < lo) | (k_word > hi))
        hdr_addr = Cat(k_pos, Const(1, 1)) if F <= hdr_base and hdr_base == 1 << len(k_pos) else hdr_base + k_pos
        m.d.comb += [cnt_r.addr.eq(k_s), cnt_w.addr.eq(k_s), cnt_w.data.eq(k_n),
                     rom_r.addr.eq(Mux(cmd == Command.INFO, t_len, hdr_addr))]
        m.d.comb += [self.core_cfg.mem.eq(k_mem), self.core_cfg.lane.eq(k_lane), self.core_cfg.addr.eq(k_w),
                     self.core_cfg.data.eq(k_word)]

        def check_byte():
            """The image check's work on the byte ``rdata`` (firmware.image.ImageChecker.feed), in
            the LD_BYTE cycle that takes it."""
            flag_of = {"magic": k_magic, "version": k_version, "signature": k_sig, "section": k_section}
            with m.Switch(k_phase):
                with m.Case(K_FIXED):
                    # The ROM word for k_pos: expected byte and the flag a mismatch raises.
                    with m.If(rdata != rom_r.data[:8]):
                        with m.Switch(rom_r.data[8:]):
                            for kind, code in _KIND_CODE.items():
                                with m.Case(code):
                                    if kind != FREE:
                                        m.d.sync += flag_of[kind].eq(1)
                    m.d.sync += k_pos.eq(k_pos + 1)
                    with m.If(k_pos == F - 1):
                        m.d.sync += [k_phase.eq(K_TABLE), k_s.eq(0), k_j.eq(0)]
                with m.Case(K_TABLE):
                    m.d.sync += k_j.eq(k_j + 1)
                    bad = Signal(name="k_table_bad")
                    with m.Switch(k_j):
                        with m.Case(0):
                            m.d.comb += bad.eq(rdata != k_mem)
                        with m.Case(1):
                            m.d.comb += bad.eq(rdata != k_lane)
                        with m.Case(2):
                            m.d.comb += bad.eq(rdata != s_bits[:8])
                        with m.Case(3):
                            m.d.comb += bad.eq(rdata != s_bits[8:])
                        for i in range(4):       # word count, u32
                            with m.Case(4 + i):
                                lo = 8 * i
                                if lo < W:
                                    m.d.sync += k_n[lo:lo + 8].eq(rdata)
                                if W - lo < 8:   # bits at or above bit W: more words than any memory holds
                                    m.d.comb += bad.eq(rdata[max(0, W - lo):] != 0)
                        for i in range(4):       # data offset, u32: the running offset
                            with m.Case(8 + i):
                                m.d.comb += bad.eq(rdata != (k_off[8 * i:8 * i + 8] if 8 * i < B else 0))
                    with m.If(k_j == 11):
                        # The entry is complete: keep its count, check it, advance the running offset.
                        m.d.comb += cnt_w.en.eq(1)
                        m.d.sync += [k_j.eq(0), k_mul.eq(s_bytes)]
                        with m.If(k_n > s_depth):
                            m.d.sync += over_flag.eq(1)
                        m.next = "LD_MUL"
                    with m.If(bad):
                        m.d.sync += k_section.eq(1)
                with m.Case(K_DATA):
                    # A word's first byte clears the rest: a narrower section's word has no bytes
                    # of the wider one before it (its limits compare, the write's data).
                    with m.Switch(k_b):
                        for q in range(max_bytes):
                            with m.Case(q):
                                m.d.sync += k_word[8 * q:].eq(rdata) if q == 0 else k_word[8 * q:8 * q + 8].eq(rdata)
                    with m.If(k_b == s_bytes - 1):
                        m.d.sync += k_b.eq(0)
                        m.next = "LD_WORD"
                    with m.Else():
                        m.d.sync += k_b.eq(k_b + 1)
                with m.Case(K_TRAILER):
                    m.d.sync += k_j.eq(k_j + 1)
                    with m.If(k_j == 3):
                        m.d.sync += k_phase.eq(K_END)
                with m.Case(K_END):
                    m.d.sync += k_section.eq(1)   # past header + data + CRC

        # -- RUN input feeder (f_): buffer bytes -> core_i, while the response goes out ----------
        f_active = Signal()
        f_byte = Signal(range(max(2, nb)))
        f_low = Signal(8 * (nb - 1)) if nb > 1 else Const(0, 0)   # earlier bytes of the element
        with m.If(f_active & ~rd_wait):
            with m.If(f_byte == nb - 1):
                m.d.comb += [self.core_i.valid.eq(1), self.core_i.payload.eq(Cat(f_low, rdata)[:input_bits])]
                with m.If(self.core_i.ready):
                    set_idx(idx + 1)
                    m.d.sync += f_byte.eq(0)
                    with m.If(idx + 1 == p_len):
                        m.d.sync += f_active.eq(0)
            if nb > 1:
                with m.Else():
                    set_idx(idx + 1)
                    m.d.sync += [f_low.eq(Cat(f_low[8:], rdata)), f_byte.eq(f_byte + 1)]

        # -- main sequence ---------------------------------------------------------------------------
        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += rx.ready.eq(1)
                with m.If(rx.valid & (rx.payload == REQUEST_SOF)):
                    m.d.sync += [crc16.eq(0xFFFF), h_idx.eq(0), h_elem.eq(0), t_len.eq(0), t_over.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                crc_byte(rx.payload, False, rx.valid)
                m.d.comb += rx.ready.eq(c_done)
                with m.If(rx.valid & c_done):
                    crc_taken()
                    m.d.sync += h_idx.eq(h_idx + 1)
                    with m.Switch(h_idx):
                        with m.Case(0):
                            m.d.sync += cmd.eq(rx.payload)
                        with m.Case(1):
                            m.d.sync += p_len.eq(rx.payload)
                        with m.Case(2):
                            length = Cat(p_len[:8], rx.payload)
                            m.d.sync += [p_len.eq(length), h_idx.eq(0)]
                            set_idx(0)
                            with m.If(length > MAX_PAYLOAD):
                                respond(Status.BAD_LENGTH)   # at once; then hunt from the next byte
                            with m.Elif(length == 0):
                                m.next = "FCS"
                            with m.Else():
                                m.next = "PAYLOAD"

            with m.State("PAYLOAD"):
                crc_byte(rx.payload, False, rx.valid)
                m.d.comb += rx.ready.eq(c_done)
                with m.If(rx.valid & c_done):
                    m.d.comb += buf_w.en.eq(1)
                    crc_taken()
                    set_idx(idx + 1)
                    with m.If(idx + 1 == p_len):
                        m.next = "FCS"
                    # RUN: count whole input vectors, and the response length they give.
                    m.d.comb += t_step.eq(out_bytes)
                    with m.If(h_elem == elem_last):
                        m.d.sync += [h_elem.eq(0), t_len.eq(t_step_sum)]
                        if may_overflow:
                            m.d.sync += t_over.eq(t_over | t_step_sum[16])
                    with m.Else():
                        m.d.sync += h_elem.eq(h_elem + 1)

            with m.State("FCS"):
                m.d.comb += rx.ready.eq(1)
                with m.If(rx.valid):
                    m.d.sync += h_idx.eq(1)
                    with m.If(h_idx == 0):
                        m.d.sync += h_crc_lo_ok.eq(rx.payload == crc16[:8])
                    with m.Elif(h_crc_lo_ok & (rx.payload == crc16[8:])):
                        set_idx(0)
                        m.next = "EXEC"
                    with m.Else():
                        respond(Status.FRAME_CRC)

            with m.State("EXEC"):
                with m.Switch(cmd):
                    with m.Case(Command.INFO):
                        respond(Status.OK)
                    with m.Case(Command.STATUS):
                        respond(Status.OK)
                    with m.Case(Command.START):
                        m.d.sync += r_status.eq(Status.OK)
                        m.next = "START"
                    with m.Case(Command.LOAD_BEGIN):
                        with m.If(p_len != 5):
                            respond(Status.BAD_LENGTH)
                        with m.Else():
                            m.next = "LB"
                    with m.Case(Command.LOAD_DATA, Command.LOAD_END):
                        with m.If(~self.loading):
                            respond(Status.LOAD_SEQUENCE)
                        with m.Elif(cmd == Command.LOAD_DATA):
                            m.next = "LD_BYTE"
                        with m.Else():
                            m.next = "LE"
                    with m.Case(Command.RUN):
                        # A capacity build's RUN sizes are the loaded model's: none without one.
                        no_model_first = ~self.model_ok if variable else Const(0)
                        with m.If(no_model_first):
                            respond(Status.NO_MODEL)
                        with m.Elif((p_len == 0) | (h_elem != 0) | t_over):
                            respond(Status.BAD_LENGTH)
                        with m.Elif(~self.model_ok):
                            respond(Status.NO_MODEL)
                        with m.Else():
                            m.d.sync += [f_active.eq(1), f_byte.eq(0)]
                            respond(Status.OK)
                    with m.Default():
                        respond(Status.UNKNOWN_COMMAND)

            with m.State("START"):
                # The core takes `start` only when idle (after reset it first clears its memories).
                with m.If(~busy):
                    m.d.comb += self.core_ctl.start.eq(1)
                    respond(r_status)

            # LOAD_BEGIN: mode u8 (a bad mode leaves a load in progress untouched), length u32.
            with m.State("LB"):
                with m.If(~rd_wait):
                    set_idx(idx + 1)
                    with m.Switch(idx[:3]):
                        with m.Case(0):
                            with m.If(rdata > LOAD_WRITE):
                                respond(Status.BAD_LENGTH)
                            with m.Else():
                                m.d.sync += l_mode.eq(rdata[0])
                        with m.Case(1, 2, 3):     # shifted in from the top: little-endian
                            m.d.sync += l_rem.eq(Cat(l_rem[8:], rdata))
                        with m.Case(4):
                            m.d.sync += l_big.eq(rdata != 0)
                            m.next = "LB_START"
            with m.State("LB_START"):
                with m.If(l_big):
                    # More than MAX_IMAGE: no load (one in progress is cancelled).
                    m.d.sync += self.loading.eq(0)
                    respond(Status.IMAGE_LENGTH)
                with m.Else():
                    m.d.sync += [self.loading.eq(1), crc32.eq(0xFFFFFFFF), k_phase.eq(K_FIXED), k_pos.eq(0),
                                 k_magic.eq(0), k_version.eq(0), k_sig.eq(0), k_section.eq(0), k_capacity.eq(0),
                                 k_s.eq(0), k_j.eq(0), k_off.eq(layout.header_length)]
                    with m.If(l_mode):
                        m.d.sync += self.model_ok.eq(0)    # the memories are about to be overwritten
                    respond(Status.OK)

            # LOAD_DATA: one image byte per pass: through the CRC32 (8 cycles), then the check.
            with m.State("LD_BYTE"):
                with m.If(idx == p_len):
                    respond(Status.OK)
                with m.Elif(l_rem == 0):
                    m.d.sync += self.loading.eq(0)       # more bytes than announced: cancelled
                    respond(Status.IMAGE_LENGTH)
                with m.Else():
                    crc_byte(rdata, True, ~rd_wait)
                    with m.If(c_done):
                        crc_taken()
                        m.d.sync += l_rem.eq(l_rem - 1)
                        set_idx(idx + 1)
                        check_byte()

            with m.State("LD_MUL"):
                # Running offset += words * word bytes, by repeated addition (no multiplier).
                m.d.sync += [k_off.eq(k_off + k_n), k_mul.eq(k_mul - 1)]
                with m.If(k_mul == 1):
                    with m.If(k_s == S - 1):
                        m.d.sync += k_s.eq(0)
                        m.next = "LD_SKIP"
                    with m.Else():
                        m.d.sync += k_s.eq(k_s + 1)
                        m.next = "LD_BYTE"

            # Next section with words (k_s just changed: the count memory answers a cycle later).
            with m.State("LD_SKIP"):
                m.next = "LD_SKIP2"
            with m.State("LD_SKIP2"):
                with m.If(k_s == S):
                    m.d.sync += [k_phase.eq(K_TRAILER), k_j.eq(0)]
                    m.next = "LD_BYTE"
                with m.Elif(cnt_r.data == 0):
                    m.d.sync += k_s.eq(k_s + 1)
                    m.next = "LD_SKIP"
                with m.Else():
                    m.d.sync += [k_phase.eq(K_DATA), k_w.eq(0), k_b.eq(0)]
                    m.next = "LD_BYTE"

            # A complete word: write it (write mode, no flag so far, the word within its limits)
            # once the core takes it (ready, or idle).
            with m.State("LD_WORD"):
                write = l_mode & no_flags & ~k_word_bad
                taken = self.core_cfg.ready if "ready" in spec.write.members else ~busy
                with m.If(k_word_bad):
                    m.d.sync += k_capacity.eq(1)
                with m.If(~write | taken):
                    m.d.comb += self.core_cfg.valid.eq(write)
                    if variable:
                        run_mem, at_inputs, at_outputs = spec.run_shape
                        with m.If(write & (k_mem == run_mem) & (k_w == at_inputs)):
                            m.d.sync += run_inputs.eq(k_word)
                        with m.If(write & (k_mem == run_mem) & (k_w == at_outputs)):
                            m.d.sync += run_outputs.eq(k_word)
                    with m.If(k_w + 1 == cnt_r.data):
                        m.d.sync += k_s.eq(k_s + 1)
                        m.next = "LD_SKIP"
                    with m.Else():
                        m.d.sync += k_w.eq(k_w + 1)
                        m.next = "LD_BYTE"

            with m.State("LE"):
                status = Signal(8)
                with m.If(l_rem != 0):
                    m.d.comb += status.eq(Status.IMAGE_LENGTH)
                with m.Elif(k_magic | ((k_phase == K_FIXED) & (k_pos < 4))):
                    m.d.comb += status.eq(Status.IMAGE_MAGIC)
                with m.Elif(k_version):
                    m.d.comb += status.eq(Status.IMAGE_VERSION)
                with m.Elif(crc32 != _CRC32_RESIDUE):
                    m.d.comb += status.eq(Status.IMAGE_CRC)
                with m.Elif(k_sig):
                    m.d.comb += status.eq(Status.IMAGE_SIGNATURE)
                with m.Elif(k_capacity):
                    m.d.comb += status.eq(Status.IMAGE_CAPACITY)
                with m.Elif(k_section | (k_phase != K_END)):
                    m.d.comb += status.eq(Status.IMAGE_SECTION)
                with m.Else():
                    m.d.comb += status.eq(Status.OK)
                m.d.sync += self.loading.eq(0)
                with m.If(l_mode):
                    m.d.sync += self.model_ok.eq(status == Status.OK)
                with m.If(l_mode & (status == Status.OK)):
                    m.d.sync += r_status.eq(Status.OK)
                    m.next = "START"                     # a new model: its sequence starts afresh
                with m.Else():
                    respond(status)

            with m.State("RESPOND"):
                m.d.comb += t_step.eq(0xFFFF)
                t_byte = Signal(8)
                t_avail = Signal()
                run_out = Signal(signed(32))
                m.d.comb += run_out.eq(self.core_o.payload)    # sign-extended to i32
                with m.Switch(t_phase):
                    with m.Case(T_SOF):
                        m.d.comb += [t_byte.eq(RESPONSE_SOF), t_avail.eq(1)]
                    with m.Case(T_STATUS):
                        m.d.comb += [t_byte.eq(r_status), t_avail.eq(1)]
                    with m.Case(T_LEN0):
                        m.d.comb += [t_byte.eq(t_len[:8]), t_avail.eq(1)]
                    with m.Case(T_LEN1):
                        m.d.comb += [t_byte.eq(t_len[8:]), t_avail.eq(1)]
                    with m.Case(T_PAY):
                        # t_len bytes are left: the payload byte is number (length - t_len).
                        with m.Switch(cmd):
                            with m.Case(Command.INFO):
                                m.d.comb += [t_byte.eq(rom_r.data[:8]), t_avail.eq(1)]
                            with m.Case(Command.STATUS):
                                m.d.comb += t_avail.eq(1)
                                # STATUS_FORMAT: busy, model loaded, last error, then steps, cycles
                                # and step_cycles, u32 each (t_len counts down from 15).
                                counters = Cat(self.core_status.steps, self.core_status.cycles,
                                               self.core_status.step_cycles)
                                with m.Switch(t_len[:4]):
                                    with m.Case(15):
                                        m.d.comb += t_byte.eq(busy)
                                    with m.Case(14):
                                        m.d.comb += t_byte.eq(self.model_ok)
                                    with m.Case(13):
                                        m.d.comb += t_byte.eq(last_error)
                                    for q in range(12):
                                        with m.Case(12 - q):
                                            m.d.comb += t_byte.eq(counters[8 * q:8 * q + 8])
                            with m.Case(Command.RUN):
                                # The length is a multiple of 4: byte (-t_len) mod 4 of the value.
                                m.d.comb += [t_byte.eq(run_out.word_select((-t_len)[:2], 8)),
                                             t_avail.eq(self.core_o.valid)]
                    with m.Case(T_CRC0):
                        m.d.comb += [t_byte.eq(crc16[:8]), t_avail.eq(1)]
                    with m.Case(T_CRC1):
                        m.d.comb += [t_byte.eq(crc16[8:]), t_avail.eq(1)]
                # Status, length and payload bytes go out once they have been through the CRC.
                crc_on = (t_phase != T_SOF) & (t_phase < T_CRC0)
                crc_byte(t_byte, False, t_avail & crc_on)
                m.d.comb += [tx.valid.eq(t_avail & (c_done | ~crc_on)), tx.payload.eq(t_byte)]
                with m.If(tx.valid & tx.ready):
                    crc_taken()
                    with m.Switch(t_phase):
                        with m.Case(T_SOF):
                            m.d.sync += [crc16.eq(0xFFFF), t_phase.eq(T_STATUS), self.error.eq(r_status != 0)]
                            # Payload length: INFO, STATUS, or RUN's k * outputs * 4 (counted on
                            # reception); none for any other command or an error.
                            with m.If(r_status != Status.OK):
                                m.d.sync += [last_error.eq(r_status), t_len.eq(0)]
                            with m.Elif(cmd == Command.INFO):
                                m.d.sync += t_len.eq(len(info))
                            with m.Elif(cmd == Command.STATUS):
                                m.d.sync += t_len.eq(STATUS_FORMAT.size)
                            with m.Elif(cmd != Command.RUN):
                                m.d.sync += t_len.eq(0)
                        with m.Case(T_STATUS, T_LEN0):
                            m.d.sync += t_phase.eq(t_phase + 1)
                        with m.Case(T_LEN1):
                            m.d.sync += t_phase.eq(Mux(t_len == 0, T_CRC0, T_PAY))
                        with m.Case(T_PAY):
                            m.d.sync += t_len.eq(t_step_sum)
                            with m.If(t_len == 1):
                                m.d.sync += t_phase.eq(T_CRC0)
                            # The 4th byte of an output value: the core may present the next one.
                            m.d.comb += self.core_o.ready.eq((cmd == Command.RUN) & (t_len[:2] == 1))
                        with m.Case(T_CRC0):
                            m.d.sync += t_phase.eq(T_CRC1)
                        with m.Case(T_CRC1):
                            m.next = "HUNT"
        return m

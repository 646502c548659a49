"""EGRUSystem: constructor checks, and an INFO request at the bit level in the Amaranth simulator."""

import math
import re

import pytest
from amaranth.sim import Simulator

from egru_accel.firmware.protocol import RESPONSE_SOF, Command, FrameDecoder, Status, encode_request
from egru_accel.firmware.image import info_payload
from egru_accel.firmware.reference import ReferenceDevice
from egru_accel.hw.params import CoreParams
from egru_accel.hw.system import ACTIVITY_HOLD_S, ACTIVITY_PRESCALE, EGRUSystem, uart_divisor
from egru_accel.quantize.random_model import random_model


@pytest.fixture(scope="module")
def params():
    return CoreParams.from_model(random_model(inputs=4, hidden=[6], outputs=3, lanes=2, seed=3), lanes=2)


def test_divisor_and_baud_rate(params):
    system = EGRUSystem(params.replace_config(clk_hz=12_000_000))
    system._MustUse__silence = True       # not elaborated here
    assert system.divisor == round(12_000_000 / 115200) == 104
    assert system.baud_actual == 12_000_000 / 104
    assert system.model_at_reset is True
    assert uart_divisor(48_000_000, 1_000_000) == 48
    assert uart_divisor(12e6, 115200) == 104            # board clock rates come as floats


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(clk_hz="12MHz"), TypeError, "clk_hz must be a number, not '12MHz'"),
    (dict(clk_hz=True), TypeError, "clk_hz must be a number, not True"),
    (dict(clk_hz=0), ValueError, "clk_hz must be a positive finite number, not 0"),
    (dict(clk_hz=12e6, baud=-9600), ValueError, "baud must be a positive finite number, not -9600"),
    (dict(clk_hz=300_000, baud=115200), ValueError,
     "clk_hz 300000 Hz / baud 115200 gives 3 clock cycles per bit, too few for the UART "
     "(divisor must be at least 4 clock cycles per bit, not 3)"),
    # 1 MHz / 115200 = 8.68 -> 9 cycles per bit: 111111.1 baud, 3.55% slow.
    (dict(clk_hz=1_000_000, baud=115200), ValueError,
     "clk_hz 1e+06 Hz with 9 clock cycles per bit gives 111111.1 baud, 3.55% off the requested 115200 "
     "(at most 2%)"),
    (dict(clk_hz=12e6, weight_ram=None), TypeError, "weight_ram must be a string, not None"),
    (dict(clk_hz=12e6, weight_ram="bram"), ValueError,
     "weight_ram must be one of 'inferred', 'ice40_spram', not 'bram'"),
    (dict(clk_hz=12e6, model_at_reset=1), TypeError, "model_at_reset must be True, False or None, not 1"),
    (dict(clk_hz=12e6, weight_ram="ice40_spram", model_at_reset=True), ValueError,
     "model_at_reset=True needs weights the bitstream initialises; weight_ram='ice40_spram' starts empty"),
])
def test_constructor_errors(params, kwargs, error, message):
    # The configuration checks its numbers and choices, the system the UART divisor.
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        EGRUSystem(params.replace_config(**kwargs))


def test_params_must_be_core_params(params):
    with pytest.raises(TypeError, match="^params must be CoreParams, not PackedModel$"):
        EGRUSystem(params.packed)
    with pytest.raises(ValueError, match=r"^a system needs its clock frequency: params.config.clk_hz is None$"):
        EGRUSystem(params)


def test_spram_system_starts_without_model(params):
    system = EGRUSystem(params.replace_config(clk_hz=12e6, weight_ram="ice40_spram"))
    system._MustUse__silence = True
    assert system.model_at_reset is False and system.params.config.weight_ram == "ice40_spram"


def test_info_request_at_the_bit_level(params):
    """Requests sent bit by bit on ``rx`` are answered on ``tx`` with exactly the reference
    device's bytes: INFO, then a STATUS with a corrupted CRC16 (FRAME_CRC). The LEDs show
    the model, the activity (held ACTIVITY_HOLD_S after the last byte) and the error."""
    baud, divisor = 9600, 8                 # a slow clock keeps the activity hold short
    clk_hz = baud * divisor
    system = EGRUSystem(params.replace_config(clk_hz=clk_hz, baud=baud))
    bad_crc = bytearray(encode_request(Command.STATUS))
    bad_crc[-1] ^= 0x01
    requests = [encode_request(Command.INFO), bytes(bad_crc)]
    reference = ReferenceDevice(params)
    expected = [reference.receive(r) for r in requests]
    received = [bytearray() for _ in requests]
    leds = []
    # The longest the LED can stay lit: the hold rounded up to whole prescaler ticks, plus
    # the tick in progress.
    hold = (math.ceil(ACTIVITY_HOLD_S * clk_hz / ACTIVITY_PRESCALE) + 1) * ACTIVITY_PRESCALE + 2

    async def host(ctx):
        ctx.set(system.rx, 1)
        await ctx.tick().repeat(20)
        for n, request in enumerate(requests):
            # One request at a time: the next after the previous answer.
            while n and len(received[n - 1]) < len(expected[n - 1]):
                await ctx.tick()
            for byte in request:
                for level in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                    ctx.set(system.rx, level)
                    await ctx.tick().repeat(divisor)

    async def line(ctx):
        # Decode tx: wait for a start bit, sample each bit in its middle. A missing answer
        # fails after a budget instead of running forever.
        budget = 100 * 10 * divisor
        for n, out in enumerate(received):
            while len(out) < len(expected[n]):
                waited = 0
                while ctx.get(system.tx):
                    await ctx.tick()
                    waited += 1
                    assert waited < budget, f"no start bit within {budget} cycles in response {n}"
                await ctx.tick().repeat(divisor + divisor // 2)
                byte = 0
                for k in range(8):
                    byte |= ctx.get(system.tx) << k
                    await ctx.tick().repeat(divisor)
                assert ctx.get(system.tx) == 1, "stop bit"
                out.append(byte)
            leds.append(ctx.get(system.leds))
        # Half a bit into the last stop bit, the activity hold has just begun; past it, dark.
        await ctx.tick().repeat(hold)
        leds.append(ctx.get(system.leds))

    sim = Simulator(system)
    sim.add_clock(1 / clk_hz)
    sim.add_testbench(host, background=True)
    sim.add_testbench(line)
    sim.run()
    assert [bytes(r) for r in received] == expected
    frames = [FrameDecoder(RESPONSE_SOF).feed(bytes(r)) for r in received]
    assert [(f[0].code, f[0].payload) for f in frames] == [(0, info_payload(params)), (Status.FRAME_CRC, b"")]
    # leds: bit 0 model loaded, bit 1 activity, bit 2 error (the last response was not OK).
    assert leds == [0b011, 0b111, 0b101]

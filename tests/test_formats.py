"""The integer primitives and formats of quantize.formats."""

import numpy as np
import pytest

from egru_accel.quantize import formats as F
from egru_accel.quantize.formats import NumberFormats


def test_round_shift_is_round_half_up():
    v = np.array([-7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7])
    assert F.round_shift(v, 2).tolist() == [int(np.floor(x / 4 + 0.5)) for x in v]
    assert F.round_shift(-2, 2) == 0 and F.round_shift(2, 2) == 1   # -0.5 -> 0, 0.5 -> 1
    assert F.round_shift(3, 0) == 3 and F.round_shift(3, -2) == 12


def test_lut_index_floor_offset_clamp():
    # pre_frac 8, lut_frac 4: index = floor(pre / 16) + 128, clamped to [0, 255].
    pre = np.array([-(1 << 30), -17, -16, -1, 0, 15, 16, 1 << 30])
    assert F.lut_index(pre, 8, 8, 4).tolist() == [0, 126, 127, 127, 128, 128, 129, 255]
    assert F.lut_index(3, 2, 6, 4) == 12 + 32  # finer table than the value: exact left shift
    assert F.lut_index(3, 2, 4, 4) == 15      # ... and clamped to the last entry


def test_tables():
    fmt = NumberFormats()
    sig, tanh = F.sigmoid_table(fmt), F.tanh_table(fmt)
    assert len(sig) == 256 and len(tanh) == 256
    assert np.all(np.diff(sig) >= 0) and np.all(np.diff(tanh) >= 0)
    assert sig.min() >= 0 and sig.max() <= fmt.sigmoid_one
    assert abs(tanh).max() <= 1 << fmt.tanh_frac
    # Entry 128 covers [0, 1/16): its centre is 1/32.
    assert sig[128] == int(np.floor(1 / (1 + np.exp(-1 / 32)) * 256 + 0.5))
    # Symmetry of the centred sampling: sigmoid(-x) = 1 - sigmoid(x) up to rounding.
    assert np.all(np.abs(sig + sig[::-1] - 256) <= 1)
    assert np.array_equal(tanh, -tanh[::-1])


@pytest.mark.parametrize("max_abs, bits, shift", [(1.0, 8, 6), (0.99, 8, 7), (127.0, 8, 0), (128.0, 8, -1),
                                                   (0.0, 8, 0), (3e-3, 8, 15)])
def test_power_of_two_shift(max_abs, bits, shift):
    assert F.power_of_two_shift(max_abs, bits) == shift
    if max_abs:
        assert np.floor(max_abs * 2.0 ** shift + 0.5) <= 127 < np.floor(max_abs * 2.0 ** (shift + 1) + 0.5)


def test_widths():
    assert F.signed_bits_for(0) == 1 and F.signed_bits_for(127) == 8 and F.signed_bits_for(128) == 9
    assert F.unsigned_bits_for(0) == 1 and F.unsigned_bits_for(255) == 8 and F.unsigned_bits_for(256) == 9
    assert F.saturate(np.array([-200, 5, 200]), 8).tolist() == [-128, 5, 127]


def test_format_validation():
    with pytest.raises(TypeError, match="NumberFormats.state_bits must be an integer"):
        NumberFormats(state_bits=16.0)
    with pytest.raises(ValueError, match=r"NumberFormats.weight_bits must be in \[2, 16\]"):
        NumberFormats(weight_bits=1)
    with pytest.raises(ValueError, match="tanh_frac .* must not exceed state_frac"):
        NumberFormats(tanh_frac=13)
    with pytest.raises(ValueError, match="state_frac .* must be below state_bits"):
        NumberFormats(state_bits=12, state_frac=12, tanh_frac=8)
    with pytest.raises(ValueError, match="unknown number-format fields"):
        NumberFormats.from_dict({"bogus": 1})
    assert NumberFormats.from_dict(NumberFormats().to_dict()) == NumberFormats()

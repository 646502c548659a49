"""Parsing nextpnr logs (excerpts of real ECP5 and iCE40 runs)."""

import pytest

from egru_accel.boards.nextpnr import parse_nextpnr_log

ECP5 = """Info: Device utilisation:
Info: 	          TRELLIS_IO:       2/    365     0%
Info: 	        TRELLIS_COMB:    9000/  83640    10%

Info: Max frequency for clock '$glbnet$cd_sync.clk': 36.00 MHz (PASS at 25.00 MHz)
Info: Device utilisation:
Info: 	          TRELLIS_IO:       2/    365     0%
Info: 	              DP16KD:      20/    208     9%
Info: 	          MULT18X18D:      16/    156    10%
Info: 	        TRELLIS_COMB:    8282/  83640     9%

Info: Max frequency for clock '$glbnet$cd_sync.clk': 38.62 MHz (PASS at 25.00 MHz)
"""

ICE40_FAIL = """Info: Device utilisation:
Info: 	         ICESTORM_LC:    4551/   5280    86%
Info: 	        ICESTORM_RAM:      64/     30   213%
Info: 	        ICESTORM_DSP:       8/      8   100%

ERROR: Unable to place cell 'core.lane1.weights.0.5_RAM', no BELs remaining to implement cell type 'ICESTORM_RAM'
"""


def test_post_route_figures():
    r = parse_nextpnr_log(ECP5)
    assert r["utilisation"]["TRELLIS_COMB"] == {"used": 8282, "available": 83640}
    assert r["utilisation"]["DP16KD"] == {"used": 20, "available": 208}
    assert r["clocks"]["$glbnet$cd_sync.clk"] == {"fmax_mhz": 38.62, "target_mhz": 25.0, "met": True}


def test_over_capacity_run():
    r = parse_nextpnr_log(ICE40_FAIL)
    assert r["utilisation"]["ICESTORM_RAM"] == {"used": 64, "available": 30}
    assert r["clocks"] == {}


def test_no_report():
    with pytest.raises(ValueError, match="no utilisation or timing report"):
        parse_nextpnr_log("Info: nothing here\n")

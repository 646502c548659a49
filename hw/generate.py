"""Write the Verilog of a core and its JSON summary."""

from __future__ import annotations

import json
import os

from amaranth.back import verilog

from .core import EGRUCore
from .params import CoreParams

__all__ = ["generate_verilog", "TOP_NAME"]

TOP_NAME = "egru_core"


def generate_verilog(params: CoreParams, out_dir: str, *, name: str = TOP_NAME) -> dict:
    """Write ``out_dir/{name}.v`` and ``out_dir/summary.json``; return the summary.

    Parameters are checked when ``params`` is built (:meth:`CoreParams.from_model`), so any
    error happens before a file is written. ``params.config.debug`` adds the debug ports.
    """
    core = EGRUCore(params)
    text = verilog.convert(core, name=name, emit_src=False)
    path = os.path.join(out_dir, f"{name}.v")
    with open(path, "w") as f:
        f.write(text)
    summary = params.summary()
    lay = params.layout
    summary.update({"top": name, "verilog": f"{name}.v",
                    "ports": {"i": f"stream of signed {lay.formats.input_bits}-bit input elements, "
                                   f"{lay.input_size} per step",
                              "o": f"stream of signed {lay.readout_bits}-bit readout values, "
                                   f"{lay.outputs} per step"}})
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary

"""docs/numerics.md's worked example, recomputed by the golden model."""

import ast
import os
import re

import numpy as np

from egru_accel.quantize import golden
from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.model import QuantLayer, QuantModel, QuantReadout

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "numerics.md")


def worked_example():
    with open(DOC) as f:
        text = f.read()
    block = re.search(r"<!-- worked-example:begin -->\n```text\n(.*?)```\n<!-- worked-example:end -->",
                      text, re.S).group(1)
    params, steps = {}, []
    for line in block.strip().splitlines():
        m = re.match(r"t(\d+): (.*)", line)
        if m:
            assert int(m.group(1)) == len(steps)
            steps.append({k.strip(): ast.literal_eval(v.strip())
                          for k, v in re.findall(r"(\w+) = (\[[^\]]*\]|-?\d+)", m.group(2))})
        else:
            k, v = line.split(" = ")
            params[k] = ast.literal_eval(v)
    return params, steps


def test_worked_example_matches_golden_model():
    p, steps = worked_example()
    model = QuantModel(
        formats=NumberFormats(),
        layers=[QuantLayer(W=np.array(p["W"]), R=np.array(p["R"]), w_shift=tuple(p["w_shift"]),
                           r_shift=tuple(p["r_shift"]), bias_x=np.array(p["bias_x"]),
                           bias_h=np.array(p["bias_h"]), theta=np.array(p["theta"]))],
        readout=QuantReadout(W=np.array(p["readout_W"]), shift=p["readout_shift"], bias=np.array(p["readout_bias"])))
    assert model.acc_frac(0) == p["acc_frac"]
    x = np.array(p["x"], dtype=np.int64)[:, None, :]
    tr = golden.run(model, x, internals=True)
    assert len(steps) == x.shape[0]
    checked = 0
    for t, expect in enumerate(steps):
        got = {k: int(v[t, 0, 0]) for k, v in tr.internals[0].items()}
        got.update(candidate=int(tr.candidate[0][t, 0, 0]), event=int(tr.events[0][t, 0, 0]),
                   y=int(tr.y[0][t, 0, 0]), c=int(tr.c[0][t, 0, 0]), logits=tr.logits[t, 0].tolist())
        for k, v in expect.items():
            assert got[k] == v, f"step {t}: {k} is {got[k]} in the golden model, {v} in the doc"
            checked += 1
    assert checked == 13 * len(steps)

"""Compare what a simulated core did with the golden model, value by value.

Both testbenches (Amaranth simulator and cocotb) record the same things: the output
values of every step, and one record per neuron update (step, layer, neuron,
candidate, fire, new state) from the core's debug port.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from egru_accel.quantize.golden import GoldenTrace

__all__ = ["CoreRecord", "Mismatch", "compare_run"]


@dataclass
class CoreRecord:
    """What the core produced for one sequence (batch index 0 of the golden trace)."""
    outputs: list = field(default_factory=list)          # [steps][O] ints
    updates: list = field(default_factory=list)          # (step, layer, neuron, candidate, fire, state)
    step_cycles: list = field(default_factory=list)      # cycles per step (status.step_cycles)


@dataclass(frozen=True)
class Mismatch:
    step: int
    layer: int | None       # None for a readout output
    index: int              # neuron (or output) index
    quantity: str
    expected: int
    got: int | None

    def __str__(self):
        where = f"output {self.index}" if self.layer is None else f"layer {self.layer} neuron {self.index}"
        return (f"step {self.step}, {where}: {self.quantity} is {self.got} in the hardware, "
                f"{self.expected} in the golden model")


def compare_run(trace: GoldenTrace, record: CoreRecord, *, batch: int = 0) -> list[Mismatch]:
    """Every disagreement between ``record`` and ``trace`` (empty list: bit-exact),
    ordered by step, then layer, then neuron."""
    out: list[Mismatch] = []
    T = trace.steps
    if len(record.outputs) != T:
        out.append(Mismatch(min(len(record.outputs), T), None, -1, "output count", T, len(record.outputs)))
    for t in range(min(T, len(record.outputs))):
        for o, (e, g) in enumerate(zip(trace.logits[t, batch], record.outputs[t])):
            if int(e) != int(g):
                out.append(Mismatch(t, None, o, "output", int(e), int(g)))
    seen = {}
    for step, layer, neuron, cand, fire, state in record.updates:
        key = (step, layer, neuron)
        if key in seen:
            out.append(Mismatch(step, layer, neuron, "update count", 1, 2))
        seen[key] = (cand, fire, state)
    for l in range(len(trace.y)):
        H = trace.y[l].shape[2]
        for t in range(T):
            for n in range(H):
                exp = (int(trace.candidate[l][t, batch, n]), int(trace.events[l][t, batch, n]),
                       int(trace.c[l][t, batch, n]))
                got = seen.get((t, l, n))
                if got is None:
                    out.append(Mismatch(t, l, n, "update", exp[0], None))
                    continue
                for name, e, g in zip(("candidate", "event", "state"), exp, got):
                    if e != int(g):
                        out.append(Mismatch(t, l, n, name, e, int(g)))
    out.sort(key=lambda m: (m.step, -1 if m.layer is None else m.layer, m.index))
    return out

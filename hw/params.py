"""Hardware parameters of the event-driven EGRU core, derived from a packed model.

Nothing here is chosen by hand: every width, depth, shift and memory word comes from
the packed model (:mod:`quantize.packer`) and its number formats (:mod:`quantize.formats`).

Memory organisation (per lane; all layers and the readout share the P lanes, in turn):

* ``weights``: the lane's weight entries of layer 0, layer 1, ..., then the readout,
  concatenated. Word: ``value | gate << weight_bits | target << (weight_bits + 2)``.
* ``row_ptr``: one word per source row, ``start | length << addr_bits`` with ``start``
  absolute in the lane's weight memory. Rows of layer ``l`` start at ``row_base[l]``
  (inputs first, then the layer's own neurons); the readout's rows at ``readout_row_base``.
* ``consts``: per local neuron of layer ``l`` (at ``const_base[l] + i``), the accumulator
  start values and the threshold, one word:
  ``init_z | init_r << A | init_ag << 2A | init_hg << 3A | theta << 4A`` with
  ``A = acc_bits``, ``init_z = bias_x_z + bias_h_z``, ``init_r`` likewise,
  ``init_ag = bias_x_g``, ``init_hg = bias_h_g`` (two's complement fields).
* ``readout_bias``: per local output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantize import formats as F
from quantize.formats import NumberFormats
from quantize.lanes import lane_neurons, lane_size
from quantize.model import QuantModel
from quantize.packer import PackedModel, pack, unpack

__all__ = ["CoreParams", "MEM_WEIGHTS", "MEM_ROW_PTR", "MEM_CONSTS", "MEM_READOUT_BIAS", "MEMORIES",
           "KIND_INPUT", "KIND_RECURRENT", "KIND_READOUT"]

#: Memory identifiers of the run-time write port (``cfg.mem``).
MEM_WEIGHTS, MEM_ROW_PTR, MEM_CONSTS, MEM_READOUT_BIAS = 0, 1, 2, 3
MEMORIES = ("weights", "row_ptr", "consts", "readout_bias")

#: What an event feeds: a layer's input rows, its recurrent rows, or the readout.
KIND_INPUT, KIND_RECURRENT, KIND_READOUT = 0, 1, 2


def _twos(v: int, bits: int) -> int:
    return int(v) & ((1 << bits) - 1)


@dataclass
class CoreParams:
    """Everything the generator needs, with the initial memory contents per lane."""
    formats: NumberFormats
    lanes: int
    dense: bool
    input_size: int
    hidden: list[int]
    outputs: int
    # layout
    n_local: list[int]            # neurons of lane 0 (the fullest) per layer
    row_base: list[int]
    readout_row_base: int
    rows: int
    const_base: list[int]
    const_depth: int
    evb_base: list[int]           # per layer: two regions (step parities) of n_local each
    evb_depth: int
    acc_depth: int
    readout_local: int
    weight_depth: int
    # widths
    target_bits: int
    addr_bits: int
    len_bits: int
    acc_bits: int
    pre_bits: int
    readout_bits: int
    value_bits: int
    local_bits: int
    # per-layer constants
    input_align: list[tuple[int, int, int]]
    recurrent_align: list[tuple[int, int, int]]
    acc_frac: list[int]
    # initial memory contents, per lane
    weights: list[list[int]] = field(repr=False)
    row_ptr: list[list[int]] = field(repr=False)
    consts: list[list[int]] = field(repr=False)
    readout_bias: list[list[int]] = field(repr=False)
    sigmoid_lut: list[int] = field(repr=False)
    tanh_lut: list[int] = field(repr=False)
    model: QuantModel = field(repr=False)

    @property
    def layers(self) -> int:
        return len(self.hidden)

    @property
    def weight_word_bits(self) -> int:
        return self.formats.weight_bits + 2 + self.target_bits

    @property
    def row_ptr_word_bits(self) -> int:
        return self.addr_bits + self.len_bits

    @property
    def const_word_bits(self) -> int:
        return 4 * self.acc_bits + self.formats.state_bits

    def mem_word_bits(self, mem: int) -> int:
        return [self.weight_word_bits, self.row_ptr_word_bits, self.const_word_bits, self.readout_bits][mem]

    def mem_depth(self, mem: int) -> int:
        return [self.weight_depth, self.rows, self.const_depth, self.readout_local][mem]

    def layer_input_bits(self, l: int) -> int:
        return self.formats.source_bits(l)

    @classmethod
    def from_model(cls, model: QuantModel, *, lanes: int, dense: bool = False,
                   max_weight_depth: int | None = None) -> "CoreParams":
        """Pack ``model`` for ``lanes`` lanes and derive the hardware parameters.

        Raises ``ValueError`` (before anything is generated) when the lanes do not fit the
        layers or an image exceeds ``max_weight_depth`` entries.
        """
        # pack() checks the model and the lanes against every layer.
        return cls.from_packed(pack(model, lanes, dense=dense), max_weight_depth=max_weight_depth)

    @classmethod
    def from_packed(cls, packed: PackedModel, *, max_weight_depth: int | None = None) -> "CoreParams":
        model = unpack(packed)
        fmt, P = packed.formats, packed.lanes
        L = len(packed.layers)
        hidden = [img.targets for img in packed.layers]
        inputs = [img.input_rows for img in packed.layers]
        n_local = [lane_size(H, P, 0) for H in hidden]
        O = packed.readout.targets
        readout_local = max(1, lane_size(O, P, 0))
        row_base, r = [], 0
        for l in range(L):
            row_base.append(r)
            r += inputs[l] + hidden[l]
        readout_row_base, rows = r, r + hidden[-1]
        const_base = [int(v) for v in np.concatenate([[0], np.cumsum(n_local)[:-1]])]
        evb_base = [2 * b for b in const_base]
        acc_depth = max(n_local)

        # Weight memory of each lane: layers then readout; bases differ per lane.
        images = packed.layers + [packed.readout]
        per_lane_entries = [sum(len(img.lanes[p].weights) for img in images) for p in range(P)]
        weight_depth = max(1, max(per_lane_entries))
        if max_weight_depth is not None and weight_depth > max_weight_depth:
            worst = int(np.argmax(per_lane_entries))
            raise ValueError(f"lane {worst} needs {per_lane_entries[worst]} weight entries but the weight "
                             f"memory holds {max_weight_depth}")
        target_bits = F.unsigned_bits_for(max(acc_depth, readout_local) - 1)
        addr_bits = F.unsigned_bits_for(weight_depth)
        max_len = max(int(img.row_lengths().max()) if img.rows else 0 for img in images)
        len_bits = F.unsigned_bits_for(max_len)

        bounds = [model.layer_bounds(l) for l in range(L)]
        acc_bits = max(max(b.bits()[k] for k in ("z", "r", "ag", "hg")) for b in bounds)
        pre_bits = max(max(b.bits().values()) for b in bounds)
        readout_bits = F.signed_bits_for(model.readout_bound())
        value_bits = max(fmt.input_bits, fmt.state_bits)

        wb = fmt.weight_bits
        weights, row_ptr, consts, ro_bias = [], [], [], []
        for p in range(P):
            words, ptrs, base = [], [], 0
            for img in images:
                w = img.lanes[p].weights.astype(np.int64)
                value = w & ((1 << wb) - 1)
                gate = (w >> wb) & 3
                target = w >> (wb + 2)
                words.extend(int(v) for v in value | (gate << wb) | (target << (wb + 2)))
                starts = (img.lanes[p].row_ptr & np.uint64((1 << img.addr_bits) - 1)).astype(np.int64)
                lens = (img.lanes[p].row_ptr >> np.uint64(img.addr_bits)).astype(np.int64)
                ptrs.extend(int(s + base) | (int(n) << addr_bits) for s, n in zip(starts, lens))
                base += len(w)
            weights.append(words)
            row_ptr.append(ptrs)
            cwords = []
            for l, img in enumerate(packed.layers):
                lane = img.lanes[p]
                for i in range(n_local[l]):
                    if i < len(lane.theta):
                        bx, bh, th = lane.bias_x[i], lane.bias_h[i], int(lane.theta[i])
                        fields = [bx[0] + bh[0], bx[1] + bh[1], bx[2], bh[2]]
                    else:  # the lane has one neuron fewer than lane 0: an unused word
                        fields, th = [0, 0, 0, 0], 0
                    word = 0
                    for k, v in enumerate(fields):
                        word |= _twos(v, acc_bits) << (k * acc_bits)
                    cwords.append(word | (th << (4 * acc_bits)))
            consts.append(cwords)
            rb = packed.readout.lanes[p].bias_h
            biases = [int(v) for v in (rb[:, 0] if rb is not None and len(rb) else [])]
            ro_bias.append([_twos(v, readout_bits) for v in biases] + [0] * (readout_local - len(biases)))

        return cls(
            formats=fmt, lanes=P, dense=packed.dense, input_size=inputs[0], hidden=hidden, outputs=O,
            n_local=n_local, row_base=row_base, readout_row_base=readout_row_base, rows=rows,
            const_base=const_base, const_depth=sum(n_local), evb_base=evb_base, evb_depth=2 * sum(n_local),
            acc_depth=acc_depth, readout_local=readout_local, weight_depth=weight_depth,
            target_bits=target_bits, addr_bits=addr_bits, len_bits=len_bits, acc_bits=acc_bits,
            pre_bits=pre_bits, readout_bits=readout_bits, value_bits=value_bits,
            local_bits=F.unsigned_bits_for(acc_depth - 1),
            input_align=[model.input_align(l) for l in range(L)],
            recurrent_align=[model.recurrent_align(l) for l in range(L)],
            acc_frac=[model.acc_frac(l) for l in range(L)],
            weights=weights, row_ptr=row_ptr, consts=consts, readout_bias=ro_bias,
            sigmoid_lut=[int(v) for v in packed.sigmoid_lut], tanh_lut=[int(v) for v in packed.tanh_lut],
            model=model)

    def lane_neurons(self, l: int, p: int) -> np.ndarray:
        return lane_neurons(self.hidden[l], self.lanes, p)

    def fixed(self) -> dict:
        """What a bitstream fixes and a model image must equal: shapes, lanes, formats, the
        per-layer constants and every memory's word width (the word layouts depend on them)."""
        s = self.summary()
        out = {k: s[k] for k in ("lanes", "dense", "inputs", "hidden", "outputs", "formats", "layers")}
        out["word_widths"] = {k: v["width"] for k, v in s["memories_per_lane"].items()}
        return out

    def mismatches(self, summary: dict) -> list[str]:
        """How this model differs from the hardware an earlier ``summary()`` describes: every
        item of :meth:`fixed` must be equal, and every memory and the pre-activation width
        must fit. An empty list: this model's images can be loaded into that hardware."""
        diffs = []
        mine = self.summary()
        fixed = self.fixed()
        for key in ("lanes", "dense", "inputs", "hidden", "outputs", "formats"):
            if fixed[key] != summary.get(key):
                diffs.append(f"{key}: the model has {fixed[key]}, the hardware {summary.get(key)}")
        for l, (a, b) in enumerate(zip(fixed["layers"], summary.get("layers", []))):
            for key, value in a.items():
                if value != b.get(key):
                    diffs.append(f"layer{l} {key}: the model has {value}, the hardware {b.get(key)} "
                                 "(a hardware constant)")
        for name, mem in mine["memories_per_lane"].items():
            hw = summary.get("memories_per_lane", {}).get(name)
            if hw is None:
                diffs.append(f"memory {name}: the hardware has none")
                continue
            if mem["depth"] > hw["depth"]:
                diffs.append(f"memory {name}: the model needs {mem['depth']} words per lane, the hardware has {hw['depth']}")
            if mem["width"] != hw["width"]:
                diffs.append(f"memory {name}: the model needs {mem['width']}-bit words, the hardware has {hw['width']}")
        need, have = mine["widths"]["pre_activation"], summary.get("widths", {}).get("pre_activation", 0)
        if need > have:
            diffs.append(f"pre-activation: the model needs {need} bits, the hardware has {have}")
        return diffs

    def summary(self) -> dict:
        """JSON-ready description: memories (depth, width, bits) and datapath widths."""
        P = self.lanes
        mems = {
            "weights": (self.weight_depth, self.weight_word_bits),
            "row_ptr": (self.rows, self.row_ptr_word_bits),
            "consts": (self.const_depth, self.const_word_bits),
            "readout_bias": (self.readout_local, self.readout_bits),
            "state": (self.const_depth, self.formats.state_bits),
            "event_buffer": (self.evb_depth, self.local_bits + self.formats.state_bits),
            "acc_z": (self.acc_depth, self.acc_bits), "acc_r": (self.acc_depth, self.acc_bits),
            "acc_ag": (self.acc_depth, self.acc_bits), "acc_hg": (self.acc_depth, self.acc_bits),
            "readout_acc": (self.readout_local, self.readout_bits),
        }
        per_lane = {k: {"depth": d, "width": w, "bits": d * w} for k, (d, w) in mems.items()}
        shared = {"sigmoid_lut": {"depth": len(self.sigmoid_lut), "width": self.formats.sigmoid_value_bits},
                  "tanh_lut": {"depth": len(self.tanh_lut), "width": self.formats.tanh_value_bits}}
        return {
            "lanes": P, "dense": self.dense, "inputs": self.input_size, "hidden": self.hidden,
            "outputs": self.outputs, "formats": self.formats.to_dict(),
            "memories_per_lane": per_lane, "tables_per_lane": shared,
            "memory_bits_total": P * sum(m["bits"] for m in per_lane.values())
            + P * sum(t["depth"] * t["width"] for t in shared.values()),
            "widths": {"acc": self.acc_bits, "pre_activation": self.pre_bits, "readout": self.readout_bits,
                       "event_value": self.value_bits, "weight_word": self.weight_word_bits,
                       "row_ptr_word": self.row_ptr_word_bits, "const_word": self.const_word_bits},
            "layers": [{"acc_frac": self.acc_frac[l], "input_align": list(self.input_align[l]),
                        "recurrent_align": list(self.recurrent_align[l]), "neurons_per_lane": self.n_local[l]}
                       for l in range(self.layers)],
        }

"""Parameters of the event-driven EGRU core: one packed model and one configuration.

Nothing here is chosen by hand or stored twice: the memories, their words, depths and
widths are the packed model's :class:`~egru_accel.quantize.memory.CoreLayout` (the packer
emits exactly the words the hardware holds), the generator's choices are an
:class:`~egru_accel.hw.config.AcceleratorConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from egru_accel.quantize.memory import CoreLayout, MemoryId
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.packer import PackedModel, pack

from .config import AcceleratorConfig

__all__ = ["CoreParams", "KIND_INPUT", "KIND_RECURRENT", "KIND_READOUT"]

#: What an event feeds: a layer's input rows, its recurrent rows, or the readout.
KIND_INPUT, KIND_RECURRENT, KIND_READOUT = 0, 1, 2


@dataclass(frozen=True)
class CoreParams:
    """What the generator builds from: ``packed`` (layout and initial memory contents) and
    ``config`` (the generator's choices). ``config.lanes`` and ``config.dense`` are the
    packing's; build with :meth:`from_model`."""
    packed: PackedModel
    config: AcceleratorConfig

    def __post_init__(self):
        if not isinstance(self.packed, PackedModel):
            raise TypeError(f"packed must be a PackedModel, not {type(self.packed).__name__}")
        if not isinstance(self.config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(self.config).__name__}")
        lay, cfg = self.packed.layout, self.config
        if (lay.lanes, lay.dense) != (cfg.lanes, cfg.dense):
            raise ValueError(f"the model is packed for {lay.lanes} lanes{' (dense)' if lay.dense else ''}, "
                             f"the configuration asks for {cfg.lanes}{' (dense)' if cfg.dense else ''}")
        if cfg.max_weight_depth is not None and lay.weight_depth > cfg.max_weight_depth:
            entries = self.packed.entries_per_lane()
            worst = max(range(len(entries)), key=entries.__getitem__)
            raise ValueError(f"lane {worst} needs {entries[worst]} weight entries but the weight memory holds "
                             f"{cfg.max_weight_depth}")

    @classmethod
    def from_model(cls, model: QuantModel, config: AcceleratorConfig | None = None, **choices) -> "CoreParams":
        """Pack ``model`` as ``config`` (or an :class:`AcceleratorConfig` of ``choices``) says.

        Raises ``TypeError``/``ValueError`` (before anything is generated) for a bad
        configuration, lanes that do not fit the layers, or an image over ``max_weight_depth``.
        """
        if config is None:
            config = AcceleratorConfig(**choices)
        elif choices:
            config = config.replace(**choices)
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        return cls(pack(model, config.lanes, dense=config.dense), config)

    def replace_config(self, **changes) -> "CoreParams":
        """The same packed model with other choices (not ``lanes`` or ``dense``, which decide
        the packing)."""
        return CoreParams(self.packed, self.config.replace(**changes))

    @property
    def layout(self) -> CoreLayout:
        return self.packed.layout

    @property
    def formats(self):
        return self.packed.layout.formats

    @property
    def lanes(self) -> int:
        return self.config.lanes

    def words(self, mem: MemoryId, lane: int) -> list[int]:
        """Initial contents of loadable memory ``mem`` of lane ``lane``."""
        return [int(w) for w in self.packed.words(mem, lane)]

    def summary(self) -> dict:
        """JSON-ready description: the configuration, the layout (every memory's depth,
        word and bits, as built), the weight entries per lane, and the signature."""
        return {"config": self.config.to_dict(), **self.packed.summary(),
                "memory_bits_total": self.layout.memory_bits()["total"],
                "signature": self.layout.signature()}

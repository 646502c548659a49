"""Host driver for a board running egru-accel: load model images, stream inputs, read status.

The driver speaks the protocol of :mod:`firmware.protocol` over a *transport*: anything
with ``write(bytes)`` and ``read(n, timeout) -> bytes``. :class:`SerialTransport` is a real
serial port (pyserial); :class:`DeviceTransport` talks to an in-process device model (the
reference device, or a simulated design), so the same driver runs against hardware,
simulation and the golden model.
"""

from __future__ import annotations

import struct
import time
from typing import Protocol

import numpy as np

from .capacity_image import CAPACITY_VERSION, build_capacity_image, parse_capacity_image, parse_capacity_info
from .protocol import (INFO_FIELDS, INFO_FORMAT, LOAD_CHECK, LOAD_WRITE, MAX_IMAGE, MAX_PAYLOAD, MAX_RESPONSE_PAYLOAD,
                       RESPONSE_SOF, STATUS_FORMAT, Command, FrameDecoder, ProtocolError, Status, encode_request)

__all__ = ["Transport", "SerialTransport", "DeviceTransport", "EGRUDevice", "DeviceError"]


class DeviceError(Exception):
    """The device cannot be reached (no port, no answer)."""


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def read(self, n: int, timeout: float) -> bytes: ...


class SerialTransport:
    """A serial port, e.g. ``/dev/ttyUSB1`` at 115200 baud."""

    def __init__(self, port: str, *, baudrate: int = 115200):
        try:
            import serial
        except ImportError:
            raise DeviceError("pyserial is not installed (pip install pyserial)") from None
        try:
            self.serial = serial.Serial(port, baudrate=baudrate, timeout=0.05)
        except (serial.SerialException, OSError) as e:
            raise DeviceError(f"cannot open serial port {port}: {e}") from None

    def write(self, data: bytes) -> None:
        self.serial.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        self.serial.timeout = timeout
        return self.serial.read(n)

    def close(self):
        self.serial.close()


class DeviceTransport:
    """An in-process device with ``receive(bytes) -> bytes`` (e.g. the reference device)."""

    def __init__(self, device):
        self.device = device
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.pending += self.device.receive(bytes(data))

    def read(self, n: int, timeout: float) -> bytes:
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out


class EGRUDevice:
    """A board (or a model of one) behind a transport.

    ``timeout``: seconds to wait for each response; ``chunk``: image bytes per LOAD_DATA
    frame (at most :data:`~firmware.protocol.MAX_PAYLOAD`, the device's request buffer).
    Requests go one at a time: the next is sent only after the previous one's response."""

    def __init__(self, transport: Transport, *, timeout: float = 2.0, chunk: int = MAX_PAYLOAD):
        if not isinstance(chunk, int) or isinstance(chunk, bool):
            raise TypeError(f"chunk must be an integer number of bytes, not {chunk!r}")
        if not 1 <= chunk <= MAX_PAYLOAD:
            raise ValueError(f"chunk must be 1 .. {MAX_PAYLOAD} bytes (a request payload), not {chunk}")
        self.transport = transport
        self.timeout = timeout
        self.chunk = chunk
        self.decoder = FrameDecoder(RESPONSE_SOF, max_payload=MAX_RESPONSE_PAYLOAD)
        self._info = None
        #: A capacity build's loaded model: (inputs, outputs) of the last image this driver loaded.
        self.model_shape: tuple[int, int] | None = None

    def request(self, command: Command, payload: bytes = b"") -> bytes:
        """Send one request; return the response payload or raise :class:`ProtocolError`."""
        self.transport.write(encode_request(command, payload))
        deadline = time.monotonic() + self.timeout
        while True:
            data = self.transport.read(4096, max(0.0, deadline - time.monotonic()))
            frames = self.decoder.feed(data)
            if frames:
                frame = frames[0]
                if not frame.crc_ok:
                    raise ProtocolError(f"{command.name}: the response's CRC16 does not match")
                status = Status(frame.code) if frame.code in Status._value2member_map_ else None
                if status != Status.OK:
                    name = status.name if status is not None else f"0x{frame.code:02x}"
                    raise ProtocolError(f"{command.name} failed: {name}", status)
                return frame.payload
            if time.monotonic() >= deadline:
                raise DeviceError(f"no answer to {command.name} within {self.timeout} s")

    def info(self) -> dict:
        """The device's description. Core v1: :data:`~firmware.protocol.INFO_FIELDS`. A capacity
        build (image format version 2): ``signature``, ``image_version``, ``capacity`` (a
        :class:`~egru_accel.quantize.capacity.Capacity`), and its ``lanes``, ``inputs``,
        ``outputs`` (the most a model may have) and ``input_bits``."""
        payload = self.request(Command.INFO)
        version = struct.unpack_from("<H", payload, 4)[0] if len(payload) >= 6 else None
        if version == CAPACITY_VERSION:
            try:
                cap = parse_capacity_info(payload)
            except ValueError as e:
                raise ProtocolError(f"INFO: {e}") from None
            self._info = {"signature": struct.unpack_from("<I", payload)[0], "image_version": version,
                          "capacity": cap, "lanes": cap.lanes, "inputs": cap.inputs, "outputs": cap.outputs,
                          "input_bits": cap.formats.input_bits}
        else:
            try:
                self._info = dict(zip(INFO_FIELDS, INFO_FORMAT.unpack(payload)))
            except struct.error:
                raise ProtocolError(f"INFO: a payload of {len(payload)} bytes is not a device description") from None
        return self._info

    def capacity(self):
        """The device's :class:`~egru_accel.quantize.capacity.Capacity`; ``ProtocolError`` if
        it is not a capacity build."""
        info = self._info or self.info()
        if "capacity" not in info:
            raise ProtocolError(f"the device (image format version {info['image_version']}) is not a capacity build")
        return info["capacity"]

    def load_model(self, model, *, progress=None) -> bytes:
        """Place a quantized model for the device's capacity and load it (:meth:`load`); returns
        the image sent. A model that does not fit raises
        :class:`~egru_accel.quantize.capacity.CapacityError`, naming the capacity it exceeds,
        before a byte is sent: the model on the device keeps answering."""
        from egru_accel.quantize.capacity import place

        cap = self.capacity()
        image = build_capacity_image(place(model, cap), cap)
        self.load(image, progress=progress)
        return image

    def status(self) -> dict:
        busy, model_ok, last_error, steps, cycles, step_cycles = STATUS_FORMAT.unpack(self.request(Command.STATUS))
        return {"busy": bool(busy), "model_loaded": bool(model_ok), "last_error": Status(last_error).name,
                "steps": steps, "cycles": cycles, "step_cycles": step_cycles}

    def start(self) -> None:
        """Begin a new sequence: recurrent state back to zero."""
        self.request(Command.START)

    def load(self, image: bytes, *, progress=None) -> None:
        """Load a model image: a check pass (nothing written), then the write pass.

        A rejected image raises :class:`ProtocolError` (status ``IMAGE_*``) after the check
        pass, and the model already on the device keeps running.
        """
        if len(image) > MAX_IMAGE:
            raise ValueError(f"an image of {len(image)} bytes exceeds the protocol's {MAX_IMAGE}")
        for mode in (LOAD_CHECK, LOAD_WRITE):
            self.request(Command.LOAD_BEGIN, struct.pack("<BI", mode, len(image)))
            for k in range(0, len(image), self.chunk):
                self.request(Command.LOAD_DATA, image[k:k + self.chunk])
                if progress:
                    progress(mode, min(len(image), k + self.chunk), len(image))
            self.request(Command.LOAD_END)
        if image[4:6] == CAPACITY_VERSION.to_bytes(2, "little"):
            shapes = parse_capacity_image(image)
            self.model_shape = (shapes.inputs, shapes.outputs)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Steps of layer-0 integer inputs [k, I] -> readout values [k, O] (int64). On a
        capacity build, ``I`` and ``O`` are the loaded model's (known once this driver loaded
        it; else ``I`` is the inputs' and ``O`` at most the capacity's)."""
        info = self._info or self.info()
        x = np.asarray(inputs, dtype=np.int64)
        inputs_, outputs = info["inputs"], info["outputs"]
        if "capacity" in info:
            inputs_, outputs = self.model_shape or (x.shape[-1] if x.ndim == 2 else inputs_, outputs)
        if x.ndim != 2 or x.shape[1] != inputs_:
            raise ValueError(f"expected inputs [k, {inputs_}], got {list(x.shape)}")
        nb = (info["input_bits"] + 7) // 8
        # Each RUN frame: at most MAX_PAYLOAD input bytes and MAX_RESPONSE_PAYLOAD output bytes.
        steps_per_frame = min(MAX_PAYLOAD // (nb * inputs_), MAX_RESPONSE_PAYLOAD // (4 * outputs))
        if steps_per_frame == 0:
            raise ValueError(f"one input vector ({nb * info['inputs']} bytes) does not fit a RUN frame "
                             f"({MAX_PAYLOAD} bytes)")
        out = []
        for k in range(0, len(x), steps_per_frame):
            part = x[k:k + steps_per_frame]
            payload = b"".join(int(v).to_bytes(nb, "little", signed=True) for v in part.ravel())
            reply = self.request(Command.RUN, payload)
            out.append(np.array(struct.unpack(f"<{len(reply) // 4}i", reply), dtype=np.int64).reshape(len(part), -1))
        return np.concatenate(out)

"""Pickles assembled opcode by opcode the way Python 2's cPickle wrote the official CIFAR python files
(protocol 2: byte strings as STRING opcodes, numpy 1.x's array and dtype reductions, memo puts), so
that the reader is checked against that format and not only against what Python 3 writes."""

import struct

import numpy as np


class Python2Pickler:
    def __init__(self):
        self.memo = 0

    def put(self) -> bytes:
        self.memo += 1
        return b"q" + bytes([self.memo]) if self.memo < 256 else b"r" + struct.pack("<I", self.memo)

    def string(self, data: bytes) -> bytes:
        head = b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<i", len(data))
        return head + data + (self.put() if len(data) > 1 else b"")  # cPickle memoized no 1-byte string

    @staticmethod
    def integer(value: int) -> bytes:
        if 0 <= value < 256:
            return b"K" + bytes([value])
        if 0 <= value < 65536:
            return b"M" + struct.pack("<H", value)
        return b"J" + struct.pack("<i", value)

    def global_(self, module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n" + self.put()

    def array(self, array: np.ndarray) -> bytes:
        assert array.dtype == np.uint8 and array.ndim == 2
        out = self.global_("numpy.core.multiarray", "_reconstruct") + self.global_("numpy", "ndarray")
        out += self.integer(0) + b"\x85" + self.string(b"b") + b"\x87R" + self.put()
        shape = b"".join(self.integer(n) for n in array.shape) + b"\x86"
        dtype = self.global_("numpy", "dtype") + self.string(b"u1") + self.integer(0) + self.integer(1) + b"\x87R"
        dtype += self.put() + b"(" + self.integer(3) + self.string(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2
        dtype += self.integer(0) + b"tb"
        return out + b"(" + self.integer(1) + shape + dtype + b"\x89" + self.string(array.tobytes()) + b"tb"

    def value(self, value) -> bytes:
        if isinstance(value, bytes):
            return self.string(value)
        if isinstance(value, int):
            return self.integer(value)
        if isinstance(value, np.ndarray):
            return self.array(value)
        if isinstance(value, list):
            head = b"]" + self.put() + b"("
            return head + b"".join(self.value(v) for v in value) + b"e"
        raise TypeError(type(value))

    def dumps(self, content: dict) -> bytes:
        head = b"\x80\x02}" + self.put() + b"("  # the dict's memo entry comes before its items'
        return head + b"".join(self.value(key) + self.value(value) for key, value in content.items()) + b"u."


def python2_pickle(content: dict) -> bytes:
    return Python2Pickler().dumps(content)

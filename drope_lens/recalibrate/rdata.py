"""Read character vectors out of an R package's lazy-load database (``data/Rdata.rdb`` / ``.rdx``).

Just enough of R's XDR serialization format (version 2/3) for data objects made of vectors and
pairlists: ``.rdx`` is a gzip'd serialized list whose ``variables`` element maps each object name
to its ``(offset, length)`` in ``.rdb``; each ``.rdb`` entry is a 4-byte big-endian length and a
zlib stream of one serialized object. Character vectors come back as lists of str (NA -> None).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from typing import Any

_NIL, _REF, _EMPTYENV, _BASEENV, _GLOBALENV, _UNBOUND, _MISSING, _BASENS = 254, 255, 242, 241, 253, 252, 251, 247
_SYM, _LIST, _LANG, _CHAR, _LGL, _INT, _REAL, _STR, _VEC = 1, 2, 6, 9, 10, 13, 14, 16, 19


class _Reader:
    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError("not an XDR-serialized R object")
        self.b, self.i = data, 2
        self.refs: list = []
        version = self.int()
        self.int(), self.int()
        if version == 3:
            n = self.int()
            self.i += n  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.b, self.i)
        self.i += 4
        return v

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (_NIL, _EMPTYENV, _BASEENV, _GLOBALENV, _UNBOUND, _MISSING, _BASENS):
            return None
        if kind == _REF:
            idx = flags >> 8
            return self.refs[(idx or self.int()) - 1]
        if kind == _SYM:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == _CHAR:
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.i : self.i + n].decode("utf-8", errors="replace")
            self.i += n
            return s
        if kind in (_LIST, _LANG):
            out = []
            while kind in (_LIST, _LANG):
                attr = self.item() if has_attr else None
                tag = self.item() if has_tag else None
                out.append((tag, self.item()))
                del attr
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            if kind != _NIL:
                self.i -= 4
                out.append((None, self.item()))
            return out
        if kind in (_LGL, _INT, _REAL, _STR, _VEC):
            n = self.int()
            if kind in (_LGL, _INT):
                val: Any = list(struct.unpack_from(f">{n}i", self.b, self.i))
                self.i += 4 * n
            elif kind == _REAL:
                val = list(struct.unpack_from(f">{n}d", self.b, self.i))
                self.i += 8 * n
            else:
                val = [self.item() for _ in range(n)]
            if has_attr:
                attrs = dict(self.item())
                names = attrs.get("names")
                if names is not None and kind == _VEC:
                    val = dict(zip(names, val, strict=False))
            return val
        raise ValueError(f"unsupported R object type {kind} at byte {self.i - 4}")


def unserialize(data: bytes) -> Any:
    """One XDR-serialized R object (vectors, named lists as dicts, pairlists as (tag, value) lists)."""
    return _Reader(data).item()


def read_lazyload(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """All objects of a lazy-load database, given the bytes of its ``.rdx`` and ``.rdb`` files."""
    index = unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else zlib.decompress(rdx[4:]))
    out = {}
    for name, (offset, length) in index["variables"].items():
        raw = rdb[offset : offset + length]
        out[name] = unserialize(zlib.decompress(raw[4:]))
    return out

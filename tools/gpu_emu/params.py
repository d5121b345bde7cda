"""The kernels' params structs (csrc/include/zaya_rt/*.h) as ctypes structures, read from the headers themselves.

The emulated entry points that take a params struct by pointer (tools/gpu_emu/emu_moe_norms.cpp) are called with
structures built here field by field, by name: the field list is written once, in the C++ header, so a test
cannot pass a value in the wrong position.

    s = struct("GroupedGemmParams", a=a, a_row_stride=K, ..., dtype=torch.bfloat16)

Tensors become their data pointers, None a null pointer, torch dtypes their DType codes. Every field must be given.
"""

from __future__ import annotations

import ctypes
import pathlib
import re

import torch

INCLUDE = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "include" / "zaya_rt"
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.int32: 3, torch.int64: 4,
               torch.float64: 5}
_SCALARS = {"int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32, "int": ctypes.c_int, "float": ctypes.c_float,
            "double": ctypes.c_double, "bool": ctypes.c_bool, "DType": ctypes.c_int32}
_STRUCT = re.compile(r"struct\s+(\w+)\s*\{(.*?)\};", re.S)
_cache: dict[str, type[ctypes.Structure]] = {}


def _fields(body: str) -> list[tuple[str, object]]:
    body = re.sub(r"//[^\n]*", "", body)
    fields = []
    for decl in filter(None, (d.strip() for d in body.split(";"))):
        m = re.fullmatch(r"(?:const\s+)?(\w+)\s*(\*?)\s*(.*)", decl, re.S)
        if m is None:
            raise ValueError(f"cannot read the declaration {decl!r}")
        base, first_star, names = m.groups()
        for i, name in enumerate(n.strip() for n in names.split(",")):
            star = first_star if i == 0 else ""
            if name.startswith("*"):
                star, name = "*", name[1:].strip()
            if star:
                ctype = ctypes.c_void_p
            elif base in _SCALARS:
                ctype = _SCALARS[base]
            else:
                raise ValueError(f"unknown field type {base!r} of {name!r}")
            fields.append((name, ctype))
    return fields


def struct_type(name: str) -> type[ctypes.Structure]:
    """The ctypes structure of the params struct `name`, laid out as the C++ compiler lays it out."""
    if name not in _cache:
        for header in sorted(INCLUDE.glob("*.h")):
            for m in _STRUCT.finditer(header.read_text()):
                if m.group(1) == name:
                    _cache[name] = type(name, (ctypes.Structure,), {"_fields_": _fields(m.group(2))})
        if name not in _cache:
            raise KeyError(f"no struct {name} in {INCLUDE}")
    return _cache[name]


def _value(v):
    if isinstance(v, torch.Tensor):
        return v.data_ptr()
    if isinstance(v, torch.dtype):
        return DTYPE_CODES[v]
    return v


def struct(name: str, **values) -> ctypes.Structure:
    """A filled params struct; a missing or unknown field name raises KeyError."""
    cls = struct_type(name)
    names = [f for f, _ in cls._fields_]
    missing, unknown = set(names) - set(values), set(values) - set(names)
    if missing or unknown:
        raise KeyError(f"{name}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
    return cls(**{k: _value(v) for k, v in values.items()})

"""The few rego-cpp C calls the evaluation hot path makes directly, below ``regopy``'s wrappers.

Measured with regopy 1.5.2: ``regopy.Input`` costs ~3 µs per value, mostly in Python, and passes
strings through unescaped, while rego-cpp keeps strings in their JSON-escaped form, so a value
with a quote or a backslash corrupts the document. ``set_input_term`` is exact but runs the JSON
text through the Rego parser (~7 µs per value). Here values go straight into rego-cpp's input
builder (~1 µs each), escaped; what the builder cannot carry exactly (floats, which it rounds to
6 decimals; integers beyond 64 bits) is ``Unsupported`` and takes the parser path instead.

A private ``CDLL`` handle on regopy's own library, so regopy's function objects keep their argtypes.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any, Final

from regopy import rego_shared

_lib = ctypes.CDLL(rego_shared.rego._name)
_vp, _u32 = ctypes.c_void_p, ctypes.c_uint32
for _name, _restype, _argtypes in (
    ("regoNewInput", _vp, []),
    ("regoFreeInput", None, [_vp]),
    ("regoInputString", _u32, [_vp, ctypes.c_char_p]),
    ("regoInputInt", _u32, [_vp, ctypes.c_int64]),
    ("regoInputBoolean", _u32, [_vp, ctypes.c_bool]),
    ("regoInputNull", _u32, [_vp]),
    ("regoInputObjectItem", _u32, [_vp]),
    ("regoInputObject", _u32, [_vp, _u32]),
    ("regoInputArray", _u32, [_vp, _u32]),
    ("regoInputValidate", _u32, [_vp]),
    ("regoSetInput", _u32, [_vp, _vp]),
    ("regoBundleQueryEntrypoint", _vp, [_vp, _vp, ctypes.c_char_p]),
    ("regoOutputOk", ctypes.c_bool, [_vp]),
    ("regoOutputJSONSize", _u32, [_vp]),
    ("regoOutputJSON", _u32, [_vp, ctypes.c_char_p, _u32]),
    ("regoOutputNode", _vp, [_vp]),
    ("regoNodeSize", _u32, [_vp]),
    ("regoNodeGet", _vp, [_vp, _u32]),
    ("regoNodeJSONSize", _u32, [_vp]),
    ("regoNodeJSON", _u32, [_vp, ctypes.c_char_p, _u32]),
    ("regoFreeOutput", None, [_vp]),
):
    _function = getattr(_lib, _name)
    _function.restype, _function.argtypes = _restype, _argtypes

_string, _int, _bool, _null = (
    _lib.regoInputString,
    _lib.regoInputInt,
    _lib.regoInputBoolean,
    _lib.regoInputNull,
)
_item, _object, _array = _lib.regoInputObjectItem, _lib.regoInputObject, _lib.regoInputArray
_INT64: Final = range(-(2**63), 2**63)


class Unsupported(Exception):
    """A value the input builder cannot carry exactly."""


def _escaped(text: str) -> bytes:
    # Escape like JSON but keep non-ASCII as is: rego-cpp compares strings in their escaped
    # form, so "é" in the input must meet "é" in a policy literal, not "\u00e9".
    if '"' not in text and "\\" not in text and text.isprintable():
        return text.encode()
    return json.dumps(text, ensure_ascii=False)[1:-1].encode()


def _push(handle: int, value: Any) -> None:
    # Exact types only: a str or int subclass (an enum) might not serialise as it prints.
    kind = type(value)
    if kind is str:
        _string(handle, _escaped(value))
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise Unsupported
            _string(handle, _escaped(key))
            _push(handle, item)
            _item(handle)
        _object(handle, len(value))
    elif kind is list or kind is tuple:
        for item in value:
            _push(handle, item)
        _array(handle, len(value))
    elif kind is bool:
        _bool(handle, value)
    elif kind is int and value in _INT64:
        _int(handle, value)
    elif value is None:
        _null(handle)
    else:
        raise Unsupported


def build_input(document: Any) -> int | None:
    """A native input holding ``document`` (free it with ``free_input``), or None if the builder
    cannot carry it exactly."""
    handle: int = _lib.regoNewInput()
    try:
        _push(handle, document)
        # The builder's status is sticky: one check covers every push.
        if _lib.regoInputValidate(handle) == 0:
            return handle
    except (Unsupported, UnicodeEncodeError, RecursionError):
        pass
    _lib.regoFreeInput(handle)
    return None


def set_input(interpreter: int, handle: int) -> bool:
    """Make the built input the interpreter's input (rego-cpp copies it)."""
    return _lib.regoSetInput(interpreter, handle) == 0


def free_input(handle: int) -> None:
    _lib.regoFreeInput(handle)


def _node_json(node: int) -> str:
    size = _lib.regoNodeJSONSize(node)
    buffer = ctypes.create_string_buffer(size)
    _lib.regoNodeJSON(node, buffer, size)
    return buffer.value.decode(errors="replace")


def query(interpreter: int, bundle: int, entrypoint: bytes) -> tuple[bool, str]:
    """(ok, JSON text) of the entrypoint for the current input; when not ok, the error report."""
    output = _lib.regoBundleQueryEntrypoint(interpreter, bundle, entrypoint)
    if not output:
        return False, "rego-cpp could not run the entrypoint"
    try:
        if _lib.regoOutputOk(output):
            size = _lib.regoOutputJSONSize(output)
            buffer = ctypes.create_string_buffer(size)
            _lib.regoOutputJSON(output, buffer, size)
            return True, buffer.value.decode()
        # Failed outputs print as "<error>"; the messages are in the error nodes' S-expressions.
        errors = _lib.regoOutputNode(output)
        count = _lib.regoNodeSize(errors) if errors else 0
        return False, "".join(_node_json(_lib.regoNodeGet(errors, i)) for i in range(count))
    finally:
        _lib.regoFreeOutput(output)

"""REMITS shared library: bus messages, bus and cache helpers, per-platform parsers and verifiers."""

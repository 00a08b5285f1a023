"""Policy over sample report fields, and the claims a verified report contributes.

Pure: takes an already verified ``SampleReport``; signature and chain checks live in ``verify``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.platforms.sample.abi import SampleReport


@dataclass(frozen=True)
class ReferenceValues:
    """What a relying party accepts: known-good launch digests, a minimum SVN, debug or not."""

    measurements: frozenset[bytes]
    min_svn: int = 0
    allow_debug: bool = False


@dataclass(frozen=True)
class Violation:
    """One failed policy check; ``got``/``want`` are strings so they drop into JSON audit logs."""

    field: str
    got: str
    want: str


def validate(report: SampleReport, refs: ReferenceValues) -> list[Violation]:
    """All violations at once (empty list = acceptable), so operators fix everything in one go."""
    violations: list[Violation] = []
    if report.measurement not in refs.measurements:
        want = ", ".join(sorted(m.hex() for m in refs.measurements)) or "<none configured>"
        violations.append(Violation("measurement", report.measurement.hex(), f"one of: {want}"))
    if report.svn < refs.min_svn:
        violations.append(Violation("svn", str(report.svn), f">= {refs.min_svn}"))
    if report.debug and not refs.allow_debug:
        violations.append(Violation("debug", "true", "false"))
    return violations


def claims(report: SampleReport) -> dict[str, object]:
    """Stable claim names for the attestation token; bytes as lowercase hex."""
    return {
        "sample.device_id": report.device_id.hex(),
        "sample.measurement": report.measurement.hex(),
        "sample.svn": report.svn,
        "sample.debug": report.debug,
        "sample.report_data": report.report_data.hex(),
    }

"""Freshness of a TPM's clock across quotes: a verified quote must not be older than one already seen.

TPMS_CLOCK_INFO semantics (TPM 2.0 Library, Part 1, "Clock" and "Startup"):

* ``reset_count`` increments on every TPM Reset (a reboot) and never decreases;
* ``restart_count`` increments on every TPM Restart / Resume and is zeroed by a TPM Reset;
* ``clock`` only moves forward while the TPM runs, but it is saved to NV memory only from time to
  time; after a power loss without an orderly shutdown the TPM resumes from the last saved value,
  which can be lower than a value it already reported. That case always comes with a TPM Reset,
  so a lower clock is legitimate exactly when ``reset_count`` went up.

So the three counters are compared lexicographically, each level only within an unchanged higher
one. A regression means the quote is a replay of an older one, or the TPM state was rolled back.
Pure: the caller keeps the previous state per AK and passes it in. The identity stage keeps it
in Redis and compares in one script (``Store.advance_tpm_clock``) with the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import VerificationError

RESET_COUNT_REGRESSED = "tpm.reset_count_regressed"
RESTART_COUNT_REGRESSED = "tpm.restart_count_regressed"
CLOCK_REGRESSED = "tpm.clock_regressed"


@dataclass(frozen=True)
class ClockState:
    clock: int
    reset_count: int
    restart_count: int


def check_clock(previous: ClockState | None, current: ClockState) -> None:
    """Raise ``VerificationError`` if ``current`` is older than ``previous`` (``None``: first quote)."""
    if previous is None:
        return
    if current.reset_count < previous.reset_count:
        raise VerificationError(
            RESET_COUNT_REGRESSED,
            f"reset count {current.reset_count} < {previous.reset_count} seen before",
        )
    if current.reset_count > previous.reset_count:
        return  # a reboot: restart count starts over and the clock may restart from its last NV save
    if current.restart_count < previous.restart_count:
        raise VerificationError(
            RESTART_COUNT_REGRESSED,
            f"restart count {current.restart_count} < {previous.restart_count} within reset {current.reset_count}",
        )
    if current.restart_count == previous.restart_count and current.clock < previous.clock:
        raise VerificationError(
            CLOCK_REGRESSED,
            f"clock {current.clock} < {previous.clock} within reset {current.reset_count} / restart {current.restart_count}",
        )

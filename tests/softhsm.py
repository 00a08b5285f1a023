"""A throwaway SoftHSM token for tests: its own config and token directory under a pytest tmp dir.

SoftHSM reads ``SOFTHSM2_CONF`` only when the module is initialised, and ``shared.custody.pkcs11``
keeps the module loaded for the whole process; so a token is meant to live for a test module (a
module-scoped fixture), and leaving the context finalizes the module so the next token's config is read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared.custody.pkcs11 import Pkcs11Config, finalize_module

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
REQUIRE_ENV = "REMITS_REQUIRE_SOFTHSM"


def require_softhsm() -> None:
    """Skip the calling test when SoftHSM is not installed, unless CI demands it (then fail)."""
    if Path(SOFTHSM_MODULE).exists():
        return
    reason = f"SoftHSM not installed ({SOFTHSM_MODULE} is absent)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} but {REQUIRE_ENV}=1")
    pytest.skip(reason)


@contextmanager
def softhsm_token(
    directory: Path,
    *,
    label: str = "remits-test",
    pin: str = "1234",
    so_pin: str = "123456",
    extra_labels: Sequence[str] = (),
) -> Iterator[Pkcs11Config]:
    """An initialised token labelled ``label`` in a SoftHSM whose tokens live in ``directory``; tokens
    named in ``extra_labels`` (same PINs) are created beside it, since SoftHSM shows only the tokens
    that existed when it was initialised."""
    require_softhsm()
    util = shutil.which("softhsm2-util")
    if util is None:
        # the module is there, so a missing tool is a broken install, not an absent one
        pytest.fail("libsofthsm2.so is installed but softhsm2-util is not on PATH")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    # whatever token an earlier config showed must not linger in the already initialised module
    finalize_module(SOFTHSM_MODULE)
    try:
        for token_label in (label, *extra_labels):
            result = subprocess.run(
                [util, "--init-token", "--free", "--label", token_label, "--pin", pin, "--so-pin", so_pin],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if result.returncode != 0:
                detail = result.stderr.strip() or result.stdout.strip()
                pytest.fail(f"softhsm2-util --init-token {token_label!r} failed: {detail}")
        yield Pkcs11Config(module=SOFTHSM_MODULE, token_label=label, pin=pin)
    finally:
        finalize_module(SOFTHSM_MODULE)
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous

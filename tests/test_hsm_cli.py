"""`remits hsm keygen` against a SoftHSM token of the test's own: the keys it creates are the ones
the service then signs and seals with, for the service and for a tenant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.custody.signer import Pkcs11Es256Key, p256_public_jwk
from tests.softhsm import softhsm_token

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with softhsm_token(tmp_path_factory.mktemp("softhsm-cli")) as config:
        yield config


def keygen(config, *argv: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_PKCS11")}
    env.update(
        REMITS_PKCS11_MODULE=config.module, REMITS_PKCS11_TOKEN=config.token_label, REMITS_PKCS11_PIN=config.pin,
        REMITS_PKCS11_SIGNING_KEY="ear-cli", REMITS_PKCS11_KEK="kek-cli",
    )  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "hsm", "keygen", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_keygen_creates_the_service_and_tenant_signing_keys_and_the_kek(token) -> None:  # type: ignore[no-untyped-def]
    made = {}
    for argv in (("--signing",), ("--signing", "--tenant", "team-a"), ("--kek",)):
        result = keygen(token, *argv)
        assert result.returncode == 0, result.stderr
        made[argv] = json.loads(result.stdout)
    assert made[("--signing",)]["label"] == "ear-cli"
    assert made[("--signing", "--tenant", "team-a")]["label"] == "ear-cli.team-a"
    assert made[("--kek",)] == {"kind": "kek", "label": "kek-cli", "kid": "p11.kek-cli"}
    # The printed key is the token's: what decide signs team-a's tokens with.
    held = Pkcs11Es256Key(token, "ear-cli.team-a").public_key()
    assert made[("--signing", "--tenant", "team-a")]["jwk"] == p256_public_jwk(held)
    assert made[("--signing",)]["kid"] != made[("--signing", "--tenant", "team-a")]["kid"]


def test_keygen_refuses_a_label_in_use_and_bad_usage(token) -> None:  # type: ignore[no-untyped-def]
    assert keygen(token, "--signing", "dup").returncode == 0
    again = keygen(token, "--signing", "dup")
    assert again.returncode == 1 and "custody." in again.stderr
    for argv in (("--kek", "--tenant", "team-a"), ("--signing", "--tenant", "Team.A")):
        refused = keygen(token, *argv)
        assert refused.returncode == 2, refused.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_PKCS11")}
    bare = subprocess.run(
        [sys.executable, "-m", "services.cli", "hsm", "keygen", "--signing", "x"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bare.returncode == 2 and "no HSM configured" in bare.stderr


def test_keygen_takes_the_slot_and_a_pin_file(token, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """REMITS_PKCS11_SLOT pins the slot that must hold the token; REMITS_PKCS11_PIN_FILE reads the
    PIN from a mounted secret (its trailing newline dropped). Both together with a PIN, a wrong
    slot or an unreadable file are refused with a named reason, never a traceback."""
    from pkcs11 import lib

    (slot,) = [s.slot_id for s in lib(token.module).get_slots(token_present=True) if s.get_token().label == token.token_label]
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin + "\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_PKCS11")}
    base.update(REMITS_PKCS11_MODULE=token.module, REMITS_PKCS11_TOKEN=token.token_label)

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "hsm", "keygen", "--signing", env.pop("label")],
            cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    made = run(label="by-slot", REMITS_PKCS11_SLOT=str(slot), REMITS_PKCS11_PIN_FILE=str(pin_file))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["jwk"] == p256_public_jwk(Pkcs11Es256Key(token, "by-slot").public_key())
    wrong_slot = run(label="x1", REMITS_PKCS11_SLOT=str(slot + 1), REMITS_PKCS11_PIN_FILE=str(pin_file))
    assert wrong_slot.returncode == 1 and "custody.token" in wrong_slot.stderr, wrong_slot.stderr
    both = run(label="x2", REMITS_PKCS11_PIN=token.pin, REMITS_PKCS11_PIN_FILE=str(pin_file))
    assert both.returncode == 1 and "custody.pin" in both.stderr and "both set" in both.stderr
    missing = run(label="x3", REMITS_PKCS11_PIN_FILE=str(tmp_path / "absent"))
    assert missing.returncode == 1 and "custody.pin" in missing.stderr and "Traceback" not in missing.stderr

"""`remits demo --tee ...` for the TEEs whose trust is not a vendor report alone (and CCA, SE): the whole flow
through a real `remits up`-style stack, each bad kind refused for its own reason."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

EXPECTED_REASONS = {
    "tpm": {
        "replayed": "nonce.replayed",
        "tampered": "tpm.signature_invalid",
        "unknown_device": "tpm.ak_not_registered",
        "wrong_measurement": "measurement.not_in_reference_values",
    },
    "az-snp-vtpm": {
        "replayed": "nonce.replayed",
        "tampered": "tpm.signature_invalid",
        "unknown_device": "azure.var_data_binding",
        "wrong_measurement": "measurement.not_in_reference_values",
    },
    "gcp-vtpm": {
        "replayed": "nonce.replayed",
        "tampered": "gcp.ak_cert_chain",
        "unknown_device": "gcp.ak_cert_chain",
        "wrong_measurement": "measurement.not_in_reference_values",
    },
    # Realms on simulated CCA platforms: a tampered token's realm token is bound to another RAK;
    # an unknown device is a platform whose CPAK no trust anchor holds.
    "cca": {
        "replayed": "nonce.replayed",
        "tampered": "cca.realm.binding",
        "unknown_device": "endorsement.not_found",
        "wrong_measurement": "measurement.not_in_reference_values",
    },
    # SE guests: a foreign machine cannot open the request; another image or a flipped bit fails the HMAC.
    "se": {
        "replayed": "nonce.replayed",
        "tampered": "se.measurement",
        "unknown_device": "se.measurement",
        "wrong_measurement": "se.measurement",
    },
}


@pytest.mark.parametrize("tee", sorted(EXPECTED_REASONS))
async def test_demo_fleet(tee: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "demo", "--tee", tee, "--fleet", "12", "--bad", "4", "--json",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["submitted"] == 12 and summary["errors"] == 0
    assert summary["affirming"] == 8 and summary["secrets_released"] == 8
    assert summary["rejected"] == 4
    reasons = {key.split(":")[0]: key.split(":")[1] for key in summary["rejection_reasons"]}
    assert reasons == EXPECTED_REASONS[tee]


async def test_demo_sev_fleet() -> None:
    """`remits demo --tee sev`: libkrun-style VMMs on simulated SEV-ES hosts, each bad kind refused
    for its own reason (the wrong policy by the firmware itself, before any measurement)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "demo", "--tee", "sev", "--fleet", "12", "--bad", "4", "--json",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["submitted"] == 12 and summary["errors"] == 0
    assert summary["affirming"] == 8 and summary["secrets_released"] == 8 and summary["rejected"] == 4
    assert summary["rejection_reasons"] == {
        "replayed:sev.measurement_mismatch": 1,
        "tampered:sev.measurement_mismatch": 1,
        "unknown_vendor:sev.ark.generation": 1,
        "wrong_policy:sev.firmware.policy_mac": 1,
    }

"""Host key document verification: the s390-tools fake chain, and failures on a simulated chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.demo.se_sim import SIM_NOW, VALID_UNTIL, FakeIbmPki, SimulatedHost, ibm_name
from shared.errors import VerificationError
from shared.platforms.se import abi
from shared.platforms.se.hkd import verify_host_key_documents

DATA = Path(__file__).parent / "data" / "se"
VECTOR_NOW = datetime(2025, 1, 1, tzinfo=UTC)  # the fake chain is valid 2024-03-21 .. 2388


def _read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _vector_chain() -> dict[str, list[bytes]]:
    return {
        "intermediates": [_read("pv_cert_ibm.crt"), _read("pv_cert_inter_ca.crt")],
        "roots": [_read("pv_cert_root_ca.crt")],
        "crls": [_read("pv_cert_ibm.crl"), _read("pv_cert_inter_ca.crl")],
    }


def _pem(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def pki() -> FakeIbmPki:
    return FakeIbmPki()


@pytest.fixture(scope="module")
def host(pki: FakeIbmPki) -> SimulatedHost:
    return SimulatedHost(pki)


def _fails(check: str, hkds: list[bytes], chain: dict[str, list[bytes]], now: datetime = SIM_NOW) -> str:
    with pytest.raises(VerificationError) as err:
        verify_host_key_documents(hkds, now=now, **chain)  # type: ignore[arg-type]
    assert err.value.check == check, err.value
    return err.value.detail


def test_vector_chain_verifies() -> None:
    keys = verify_host_key_documents([_read("pv_cert_host.crt")], now=VECTOR_NOW, **_vector_chain())
    assert len(keys) == 1
    assert isinstance(keys[0].curve, ec.SECP521R1)


def test_vector_chain_der_and_expiry() -> None:
    from cryptography import x509

    der = x509.load_pem_x509_certificate(_read("pv_cert_host.crt")).public_bytes(serialization.Encoding.DER)
    assert len(verify_host_key_documents([der], now=VECTOR_NOW, **_vector_chain())) == 1
    # Before the fake chain was issued.
    _fails("se.hkd.expired", [der], _vector_chain(), datetime(2024, 3, 1, tzinfo=UTC))


def test_vector_host_key_of_other_signer_rejected() -> None:
    # pv_keys_host.pem.crt names the same issuer but was signed by another (test) IBM key.
    _fails("se.hkd.chain", [_read("pv_keys_host.pem.crt")], _vector_chain(), VECTOR_NOW)


def test_simulated_chain_verifies(host: SimulatedHost) -> None:
    keys = verify_host_key_documents([host.hkd_pem], now=SIM_NOW, **host.chain())
    assert abi.host_key_hash(keys[0]) == host.host_key_hash


def test_ibm_crl_issuer_is_reordered(pki: FakeIbmPki) -> None:
    from cryptography import x509

    crl = x509.load_pem_x509_crl(pki.host_key_crl())
    assert crl.issuer != pki.signing_cert.subject  # differs as an ordered name...
    assert set(crl.issuer) == set(pki.signing_cert.subject)  # ...but has the same attributes


def test_revoked_hkd(pki: FakeIbmPki, host: SimulatedHost) -> None:
    chain = pki.chain(crls=[pki.host_key_crl([host.hkd.serial_number]), pki.intermediate_crl()])
    _fails("se.hkd.revoked", [host.hkd_pem], chain)


def test_revoked_signing_cert(pki: FakeIbmPki, host: SimulatedHost) -> None:
    chain = pki.chain(crls=[pki.host_key_crl(), pki.intermediate_crl([pki.signing_cert.serial_number])])
    _fails("se.hkd.revoked", [host.hkd_pem], chain)


def test_expired_hkd(pki: FakeIbmPki) -> None:
    key = ec.generate_private_key(ec.SECP521R1()).public_key()
    old = pki.issue_hkd(key, not_before=SIM_NOW - timedelta(days=400), not_after=SIM_NOW - timedelta(days=1))
    _fails("se.hkd.expired", [_pem(old)], pki.chain())


def test_everything_expired_after_window(host: SimulatedHost) -> None:
    _fails("se.hkd.expired", [host.hkd_pem], host.chain(), VALID_UNTIL + timedelta(days=1))


def test_hkd_wrong_signature(pki: FakeIbmPki) -> None:
    key = ec.generate_private_key(ec.SECP521R1()).public_key()
    forged = pki.issue_hkd(key, signer=ec.generate_private_key(ec.SECP384R1()))
    detail = _fails("se.hkd.signature", [_pem(forged)], pki.chain())
    assert "IBM" in detail


def test_chain_wrong_signature(pki: FakeIbmPki, host: SimulatedHost) -> None:
    other = FakeIbmPki()  # same names, other keys: its root did not sign our intermediate
    chain = {**pki.chain(), "roots": other.chain()["roots"]}
    _fails("se.hkd.signature", [host.hkd_pem], chain)


def test_wrong_signing_subject() -> None:
    bad = FakeIbmPki(signing_subject=ibm_name("IBM Z Host Key Signing Service", "Boston"))
    hkd = bad.issue_hkd(ec.generate_private_key(ec.SECP521R1()).public_key())
    _fails("se.hkd.subject", [_pem(hkd)], bad.chain())
    ou = FakeIbmPki(signing_subject=ibm_name("IBM Z Something Else"))
    hkd = ou.issue_hkd(ec.generate_private_key(ec.SECP521R1()).public_key())
    _fails("se.hkd.subject", [_pem(hkd)], ou.chain())


def test_armonk_signing_subject_accepted() -> None:
    pki = FakeIbmPki(signing_subject=ibm_name("IBM Z Host Key Signing Service", "Armonk"))
    host = SimulatedHost(pki)
    assert len(verify_host_key_documents([host.hkd_pem], now=SIM_NOW, **host.chain())) == 1


def test_hkd_key_must_be_p521(pki: FakeIbmPki) -> None:
    hkd = pki.issue_hkd(ec.generate_private_key(ec.SECP384R1()).public_key())
    _fails("se.hkd.key", [_pem(hkd)], pki.chain())


def test_crl_failures(pki: FakeIbmPki, host: SimulatedHost) -> None:
    stale = pki.host_key_crl(
        last_update=SIM_NOW - timedelta(days=30), next_update=SIM_NOW - timedelta(days=1)
    )
    _fails("se.hkd.crl", [host.hkd_pem], pki.chain(crls=[stale, pki.intermediate_crl()]))
    forged = pki.host_key_crl(signer=ec.generate_private_key(ec.SECP384R1()))
    _fails("se.hkd.crl", [host.hkd_pem], pki.chain(crls=[forged, pki.intermediate_crl()]))
    foreign = FakeIbmPki().intermediate_crl()  # same name, another key
    _fails("se.hkd.crl", [host.hkd_pem], pki.chain(crls=[pki.host_key_crl(), foreign]))
    # Without IBM's host-key CRL a revoked HKD would go unnoticed.
    _fails("se.hkd.crl", [host.hkd_pem], pki.chain(crls=[pki.intermediate_crl()]))
    keys = verify_host_key_documents([host.hkd_pem], now=SIM_NOW, require_hkd_crl=False, **pki.chain(crls=[]))
    assert len(keys) == 1


def test_missing_pieces(pki: FakeIbmPki, host: SimulatedHost) -> None:
    chain = pki.chain()
    _fails("se.hkd.subject", [host.hkd_pem], {**chain, "intermediates": chain["intermediates"][1:]})
    _fails("se.hkd.chain", [host.hkd_pem], {**chain, "intermediates": chain["intermediates"][:1]})
    _fails("se.hkd.chain", [host.hkd_pem], {**chain, "roots": []})
    _fails("se.hkd.chain", [], chain)
    _fails("se.hkd.chain", [b"not a certificate"], chain)


def test_several_hkds(pki: FakeIbmPki, host: SimulatedHost) -> None:
    second = SimulatedHost(pki)
    keys = verify_host_key_documents([host.hkd_pem, second.hkd_pem], now=SIM_NOW, **pki.chain())
    assert [abi.host_key_hash(k) for k in keys] == [host.host_key_hash, second.host_key_hash]

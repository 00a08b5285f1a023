"""The product's links (ARK, ASK, CRL signature) are checked once per set of bytes; what depends on
time or on revocation is checked at every use."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from services.demo.snp_sim import SimulatedAmd, SimulatedSnpGuest
from shared.errors import VerificationError
from shared.platforms.snp import chain, checks
from shared.platforms.snp.abi import Product
from shared.platforms.snp.certs import AmdRoots


@pytest.fixture(scope="module")
def vendor() -> SimulatedAmd:
    return SimulatedAmd.generate("Milan")


def test_a_second_chip_pays_only_its_own_link(vendor: SimulatedAmd, monkeypatch: pytest.MonkeyPatch) -> None:
    roots = AmdRoots(Product.MILAN, vendor.ark, vendor.ask, vendor.ask)
    pinned = {Product.MILAN: roots}
    crl = x509.load_der_x509_crl(vendor.crl_der())
    now = datetime.now(UTC)
    calls: list[str] = []
    real_check_ark, real_check_crl_signature = chain.check_ark, chain.check_crl_signature
    monkeypatch.setattr(chain, "check_ark", lambda *a: (calls.append("ark"), real_check_ark(*a)))
    monkeypatch.setattr(chain, "check_crl_signature", lambda *a: (calls.append("crl"), real_check_crl_signature(*a)))
    for i in range(3):
        guest = SimulatedSnpGuest.create(hashlib.sha384(b"image %d" % i).digest())
        vek = vendor.issue_vcek(guest.chip_id, guest.tcb, guest.vcek_key.public_key())
        verified = chain.verify_vek_chain(vek, pinned, now, crl=crl, product=Product.MILAN, pinned=pinned)
        assert verified.extensions.hw_id == guest.chip_id[: len(verified.extensions.hw_id)]
    assert calls == ["ark", "crl"]  # once for three chips
    # Time still counts at every use: the same links, checked long after the CRL's next update.
    guest = SimulatedSnpGuest.create(hashlib.sha384(b"late").digest())
    vek = vendor.issue_vcek(guest.chip_id, guest.tcb, guest.vcek_key.public_key())
    with pytest.raises(VerificationError) as err:
        chain.verify_vek_chain(vek, pinned, now + timedelta(days=400), crl=crl, product=Product.MILAN, pinned=pinned)
    assert err.value.check in (checks.CRL_VALIDITY, checks.CERT_VALIDITY)
    # And revocation: a CRL listing the ASK (a different CRL, so its signature is checked anew).
    revoking = x509.load_der_x509_crl(vendor.crl_der(revoked_serials=(vendor.ask.serial_number,)))
    with pytest.raises(VerificationError) as err:
        chain.verify_vek_chain(vek, pinned, now, crl=revoking, product=Product.MILAN, pinned=pinned)
    assert err.value.check == checks.REVOKED

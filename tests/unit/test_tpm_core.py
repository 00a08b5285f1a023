"""TPM 2.0 core: structure parsing and marshalling, quote verification, clock freshness.

Real quotes (tests/data/tpm/core, see its README) from a software TPM and from Azure SEV-SNP / TDX
vTPMs; synthetic quotes signed by software keys for the schemes and banks real vectors lack."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError, VerificationError
from shared.platforms.tpm import abi
from shared.platforms.tpm.abi import (
    TPM_ALG_ECC,
    TPM_ALG_ECDAA,
    TPM_ALG_ECDSA,
    TPM_ALG_HMAC,
    TPM_ALG_NULL,
    TPM_ALG_RSA,
    TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA,
    TPM_ALG_SHA1,
    TPM_ALG_SHA256,
    TPM_ALG_SHA384,
    TPM_ALG_SHA512,
    TPM_ECC_NIST_P256,
    TPM_ECC_NIST_P384,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    PcrSelection,
    Signature,
    marshal_attest,
    marshal_public,
    marshal_signature,
    parse_attest,
    parse_public,
    parse_public_2b,
    parse_signature,
    tpm2b,
)
from shared.platforms.tpm.validate import ClockState, check_clock
from shared.platforms.tpm.verify import QuoteClaims, load_ak, pcr_digest, verify_quote

DATA = Path(__file__).resolve().parents[1] / "data" / "tpm" / "core"
FW_AZURE = 0x2020031200120003
ALL_24 = tuple(range(24))


def _json(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def _hcl_ak(hcl: bytes) -> dict[str, Any]:
    """The HCLAkPub JWK from an HCL report's variable data (JSON at 0x4D4, u32 LE size at 0x4D0)."""
    (size,) = struct.unpack_from("<I", hcl, 0x4D0)
    var_data = json.loads(hcl[0x4D4 : 0x4D4 + size])
    return next(key for key in var_data["keys"] if key["kid"] == "HCLAkPub")


def _hcl_var_data(evidence: dict[str, Any]) -> dict[str, Any]:
    hcl = base64.urlsafe_b64decode(evidence["hcl_report"] + "==")
    (size,) = struct.unpack_from("<I", hcl, 0x4D0)
    return json.loads(hcl[0x4D4 : 0x4D4 + size])


def _sha256_bank(values: list[str]) -> dict[str, dict[int, bytes]]:
    return {"sha256": {index: bytes.fromhex(value) for index, value in enumerate(values)}}


@dataclass(frozen=True)
class RealQuote:
    name: str
    message: bytes
    signature: bytes | Signature
    ak: object
    pcrs: dict[str, dict[int, bytes]]
    nonce: bytes
    clock: int
    reset_count: int
    restart_count: int
    firmware_version: int
    pcr0: str


def _azure(
    name: str, file: str, nonce: bytes, clock: int, reset: int, pcr0: str, ak: object = None
) -> RealQuote:
    evidence = _json(file)
    quote = evidence.get("tpm_quote", evidence)
    if ak is None:
        ak = _hcl_ak(base64.urlsafe_b64decode(evidence["hcl_report"] + "=="))
    # Azure ships the bare RSASSA signature, not a TPMT_SIGNATURE.
    signature = Signature(TPM_ALG_RSASSA, TPM_ALG_SHA256, bytes.fromhex(quote["signature"]))
    return RealQuote(
        name,
        bytes.fromhex(quote["message"]),
        signature,
        ak,
        _sha256_bank(quote["pcrs"]),
        nonce,
        clock,
        reset,
        0,
        FW_AZURE,
        pcr0,
    )


def _real_quotes() -> list[RealQuote]:
    trustee = _json("trustee-tpm-evidence.json")
    quote = trustee["tpm_quote"]
    return [
        RealQuote(
            "trustee-swtpm",
            base64.b64decode(quote["message"]),
            base64.b64decode(quote["signature"]),
            trustee["ak_public"],
            _sha256_bank(quote["pcrs"]),
            bytes.fromhex(
                "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393"
                "ef0e41a18b3569ab678f1497fbc5c12000000000000000000000000000000000"
            ),
            1913548331,
            2,
            0,
            0x2019102300163636,
            "00" * 32,
        ),
        _azure(
            "az-snp-v1",
            "az-snp-vtpm-evidence-v1.json",
            b"challenge",
            3513262,
            2,
            "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced",
        ),
        _azure(
            "az-snp-v2",
            "az-snp-vtpm-evidence-v2.json",
            bytes.fromhex(
                "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
            ),
            332074726,
            2,
            "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7",
        ),
        _azure(
            "az-tdx-v1",
            "az-tdx-vtpm-evidence-v1.json",
            b"challenge",
            354772869,
            1,
            "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273",
        ),
        _azure(
            "az-snp-tpm-quote-v1",
            "az-snp-vtpm-tpm-quote-v1.json",
            b"challenge",
            2167057,
            3,
            "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be",
            ak=_hcl_ak((DATA / "az-snp-vtpm-hcl-report.bin").read_bytes()),
        ),
    ]


REAL = _real_quotes()
REAL_IDS = [case.name for case in REAL]


# ---------------------------------------------------------------------------------------------
# Real quotes


@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
def test_real_quote_verifies_with_expected_values(case: RealQuote) -> None:
    claims = verify_quote(case.message, case.signature, case.ak, case.pcrs, case.nonce)
    assert claims.nonce == case.nonce.hex()
    assert (claims.clock, claims.reset_count, claims.restart_count) == (
        case.clock,
        case.reset_count,
        case.restart_count,
    )
    assert claims.firmware_version == case.firmware_version
    assert claims.safe is True
    assert set(claims.pcrs) == {"sha256"} and sorted(claims.pcrs["sha256"]) == list(ALL_24)
    assert claims.pcrs["sha256"][0] == case.pcr0
    # The qualified signer is a SHA-256 qualified name: nameAlg then 32 bytes.
    assert claims.signer.startswith("000b") and len(claims.signer) == 2 * 34
    flat = claims.as_claims()
    assert flat["tpm.nonce"] == case.nonce.hex()
    assert flat["tpm.clock"] == case.clock
    assert flat["tpm.reset_count"] == case.reset_count
    assert flat["tpm.restart_count"] == case.restart_count
    assert flat["tpm.firmware_version"] == str(case.firmware_version)
    assert flat["tpm.pcr.sha256.0"] == case.pcr0
    assert sum(key.startswith("tpm.pcr.sha256.") for key in flat) == 24


def test_trustee_quote_details() -> None:
    case = REAL[0]
    attest = parse_attest(case.message)
    assert attest.magic == TPM_GENERATED_VALUE and attest.type == TPM_ST_ATTEST_QUOTE
    assert len(attest.extra_data) == 64
    assert attest.pcr_selections == (PcrSelection(TPM_ALG_SHA256, ALL_24),)
    assert attest.pcr_digest.hex() == "019de64c9318655e422c3d03831169896e31f02a1d74e4d8fef575bf4e0d75fa"
    signature = parse_signature(case.signature)  # type: ignore[arg-type]
    assert (signature.sig_alg, signature.hash_alg, len(signature.signature)) == (
        TPM_ALG_RSASSA,
        TPM_ALG_SHA256,
        256,
    )
    claims = verify_quote(case.message, case.signature, case.ak, case.pcrs, None)
    assert claims.pcrs["sha256"][8] == "00" * 32
    assert claims.pcrs["sha256"][17] == "ff" * 32 and claims.pcrs["sha256"][23] == "00" * 32


def test_azure_v2_nonce_is_the_hcl_user_data_prefix() -> None:
    evidence = _json("az-snp-vtpm-evidence-v2.json")
    user_data = bytes.fromhex(_hcl_var_data(evidence)["user-data"])
    attest = parse_attest(bytes.fromhex(evidence["tpm_quote"]["message"]))
    assert len(attest.extra_data) == 48
    assert user_data.startswith(attest.extra_data)
    assert user_data[48:] == bytes(16)


@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
def test_real_structures_round_trip(case: RealQuote) -> None:
    attest = parse_attest(case.message)
    rebuilt = marshal_attest(
        magic=attest.magic,
        type=attest.type,
        qualified_signer=attest.qualified_signer,
        extra_data=attest.extra_data,
        clock=attest.clock,
        reset_count=attest.reset_count,
        restart_count=attest.restart_count,
        safe=attest.safe,
        firmware_version=attest.firmware_version,
        pcr_selections=attest.pcr_selections,
        pcr_digest=attest.pcr_digest,
    )
    assert rebuilt == case.message == attest.raw
    wire = case.signature if isinstance(case.signature, bytes) else marshal_signature(case.signature)
    assert marshal_signature(parse_signature(wire)) == wire


@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
def test_real_quote_wrong_nonce(case: RealQuote) -> None:
    with pytest.raises(VerificationError) as info:
        verify_quote(
            case.message, case.signature, case.ak, case.pcrs, case.nonce[:-1] + bytes([case.nonce[-1] ^ 1])
        )
    assert info.value.check == "tpm.nonce_mismatch"
    with pytest.raises(VerificationError, match=r"tpm\.nonce_mismatch"):
        verify_quote(case.message, case.signature, case.ak, case.pcrs, b"")


@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
@pytest.mark.parametrize("index", [0, 7, 23])
def test_real_quote_altered_pcr(case: RealQuote, index: int) -> None:
    pcrs = {"sha256": dict(case.pcrs["sha256"])}
    value = bytearray(pcrs["sha256"][index])
    value[31] ^= 0x01
    pcrs["sha256"][index] = bytes(value)
    with pytest.raises(VerificationError) as info:
        verify_quote(case.message, case.signature, case.ak, pcrs, case.nonce)
    assert info.value.check == "tpm.pcr_digest_mismatch"


def test_real_quote_missing_and_malformed_pcr() -> None:
    case = REAL[1]
    pcrs = {"sha256": {i: v for i, v in case.pcrs["sha256"].items() if i != 14}}
    with pytest.raises(VerificationError, match="sha256 PCR 14") as info:
        verify_quote(case.message, case.signature, case.ak, pcrs, case.nonce)
    assert info.value.check == "tpm.pcr_missing"
    with pytest.raises(VerificationError) as info:
        verify_quote(case.message, case.signature, case.ak, {"sha1": case.pcrs["sha256"]}, case.nonce)
    assert info.value.check == "tpm.pcr_missing"
    short = {"sha256": {**case.pcrs["sha256"], 3: b"\x00" * 20}}
    with pytest.raises(VerificationError) as info:
        verify_quote(case.message, case.signature, case.ak, short, case.nonce)
    assert info.value.check == "tpm.pcr_malformed"


def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
def test_real_quote_named_bit_flips(case: RealQuote) -> None:
    extra_end = 10 + 34 + len(case.nonce)  # magic, type, signer TPM2B (2+34), extraData size, data
    expectations = {
        0: "tpm.not_tpm_generated",  # magic
        3: "tpm.not_tpm_generated",
        5: "tpm.not_a_quote",  # type 0x8018 -> 0x8019
        12: "tpm.signature_invalid",  # inside the qualified signer
        extra_end - 1: "tpm.signature_invalid",  # last nonce byte
        extra_end + 7: "tpm.signature_invalid",  # clock, low byte
        extra_end + 11: "tpm.signature_invalid",  # reset count
        extra_end + 16: "tpm.signature_invalid",  # safe 1 -> 0
        extra_end + 20: "tpm.signature_invalid",  # firmware version
        len(case.message) - 1: "tpm.signature_invalid",  # pcrDigest
        len(case.message) - 36: "tpm.signature_invalid",  # PCR bitmap (PCR 8 deselected)
    }
    for offset, check in expectations.items():
        with pytest.raises(VerificationError) as info:
            verify_quote(_flip(case.message, offset), case.signature, case.ak, case.pcrs, None)
        assert info.value.check == check, offset
    parse_failures = {
        6: "parse.tpm.attest.qualified_signer",  # signer size 0x0022 -> 0x0122 swallows the rest
        42: "parse.tpm.attest.extra_data",  # extraData size grows by 256, past the end
        extra_end + 16: "parse.tpm.attest.safe",  # safe 1 -> 3 (bit 1)
        extra_end + 25: "parse.tpm.attest.pcr_select.count",  # selection count 1 -> 0x01000001
    }
    for offset, reason in parse_failures.items():
        bit = 1 if reason.endswith(".safe") else 0
        with pytest.raises(ParseError) as perr:
            verify_quote(_flip(case.message, offset, bit), case.signature, case.ak, case.pcrs, None)
        assert perr.value.reason.startswith(reason), (offset, perr.value.reason)


@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
def test_every_single_bit_flip_of_a_real_message_is_rejected(case: RealQuote) -> None:
    key = load_ak(case.ak)
    for offset in range(len(case.message)):
        for bit in (0, 7):
            with pytest.raises((VerificationError, ParseError)):
                verify_quote(_flip(case.message, offset, bit), case.signature, key, case.pcrs, None)


@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
def test_real_signature_bit_flips(case: RealQuote) -> None:
    key = load_ak(case.ak)
    signature = case.signature if isinstance(case.signature, Signature) else parse_signature(case.signature)
    for offset in (0, 1, 100, 254, 255):
        flipped = Signature(signature.sig_alg, signature.hash_alg, _flip(signature.signature, offset))
        with pytest.raises(VerificationError) as info:
            verify_quote(case.message, flipped, key, case.pcrs, case.nonce)
        assert info.value.check == "tpm.signature_invalid"


def test_trustee_marshalled_signature_bit_flips() -> None:
    case = REAL[0]
    wire = case.signature
    assert isinstance(wire, bytes)
    # sigAlg RSASSA 0x0014 -> RSAPSS 0x0016: a well-formed signature of another scheme
    with pytest.raises(VerificationError, match=r"tpm\.signature_invalid"):
        verify_quote(case.message, _flip(wire, 1, 1), case.ak, case.pcrs, None)
    # sigAlg -> 0x0015 (RSAES), not a signature scheme
    with pytest.raises(ParseError) as perr:
        verify_quote(case.message, _flip(wire, 1, 0), case.ak, case.pcrs, None)
    assert perr.value.reason == "parse.tpm.signature.sig_alg"
    # hashAlg SHA-256 -> SHA-1: refused by name, never verified
    sha1 = wire[:2] + b"\x00\x04" + wire[4:]
    with pytest.raises(VerificationError, match=r"tpm\.unsupported_algorithm"):
        verify_quote(case.message, sha1, case.ak, case.pcrs, None)
    # hashAlg SHA-256 -> SHA-384: same bytes, wrong hash
    with pytest.raises(VerificationError, match=r"tpm\.signature_invalid"):
        verify_quote(case.message, wire[:3] + b"\x0c" + wire[4:], case.ak, case.pcrs, None)
    # size 0x0100 -> 0x0000: 256 trailing bytes
    with pytest.raises(ParseError) as perr:
        verify_quote(case.message, _flip(wire, 4, 0), case.ak, case.pcrs, None)
    assert perr.value.reason == "parse.tpm.signature"
    # the signature body itself
    for offset in (6, 70, 200, len(wire) - 1):
        with pytest.raises(VerificationError, match=r"tpm\.signature_invalid"):
            verify_quote(case.message, _flip(wire, offset, 3), case.ak, case.pcrs, None)
    with pytest.raises(ParseError):
        verify_quote(case.message, wire[:-1], case.ak, case.pcrs, None)


def test_real_quote_with_another_ak_is_rejected() -> None:
    case, other = REAL[1], REAL[2]
    with pytest.raises(VerificationError) as info:
        verify_quote(case.message, case.signature, other.ak, case.pcrs, case.nonce)
    assert info.value.check == "tpm.signature_invalid"


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(ParseError) as perr:
        parse_attest(REAL[0].message + b"\x00")
    assert perr.value.reason == "parse.tpm.attest"


# ---------------------------------------------------------------------------------------------
# Software keys


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


_CRYPTO_HASH = {
    TPM_ALG_SHA256: hashes.SHA256(),
    TPM_ALG_SHA384: hashes.SHA384(),
    TPM_ALG_SHA512: hashes.SHA512(),
}
_HASHLIB = {
    TPM_ALG_SHA1: hashlib.sha1,
    TPM_ALG_SHA256: hashlib.sha256,
    TPM_ALG_SHA384: hashlib.sha384,
    TPM_ALG_SHA512: hashlib.sha512,
}


def _bank_values(selections: list[PcrSelection]) -> dict[str, dict[int, bytes]]:
    pcrs: dict[str, dict[int, bytes]] = {}
    for selection in selections:
        bank = abi.BANK_NAMES[selection.hash_alg]
        size = abi.DIGEST_SIZES[selection.hash_alg]
        pcrs[bank] = {i: hashlib.sha512(f"{bank}/{i}".encode()).digest()[:size] for i in range(24)}
    return pcrs


def _sign(private: Any, sig_alg: int, hash_alg: int, message: bytes, salt: Any = None) -> Signature:
    algorithm = _CRYPTO_HASH.get(hash_alg, hashes.SHA1())
    if sig_alg == TPM_ALG_RSASSA:
        return Signature(sig_alg, hash_alg, private.sign(message, padding.PKCS1v15(), algorithm))
    if sig_alg == TPM_ALG_RSAPSS:
        pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=salt)
        return Signature(sig_alg, hash_alg, private.sign(message, pss, algorithm))
    size = (private.curve.key_size + 7) // 8
    return abi.ecdsa_signature(private.sign(message, ec.ECDSA(algorithm)), hash_alg, size)


def _build_quote(
    private: Any,
    sig_alg: int,
    hash_alg: int,
    selections: list[PcrSelection],
    nonce: bytes = b"nonce-1234",
    salt: Any = None,
    **fields: Any,
) -> tuple[bytes, bytes, dict[str, dict[int, bytes]]]:
    pcrs = _bank_values(selections)
    digest = pcr_digest(selections, pcrs, hash_alg)
    message = marshal_attest(
        qualified_signer=b"\x00\x0b" + bytes(range(32)),
        extra_data=nonce,
        clock=fields.pop("clock", 123456789),
        reset_count=fields.pop("reset_count", 5),
        restart_count=fields.pop("restart_count", 1),
        firmware_version=0x0102030405060708,
        pcr_selections=selections,
        pcr_digest=digest,
        **fields,
    )
    return message, marshal_signature(_sign(private, sig_alg, hash_alg, message, salt)), pcrs


SOFTWARE_CASES = [
    ("rsa-pkcs1-sha256", "rsa", TPM_ALG_RSASSA, TPM_ALG_SHA256, None),
    ("rsa-pkcs1-sha384", "rsa", TPM_ALG_RSASSA, TPM_ALG_SHA384, None),
    ("rsa-pkcs1-sha512", "rsa", TPM_ALG_RSASSA, TPM_ALG_SHA512, None),
    ("rsa-pss-digest-salt", "rsa", TPM_ALG_RSAPSS, TPM_ALG_SHA256, padding.PSS.DIGEST_LENGTH),
    ("rsa-pss-max-salt", "rsa", TPM_ALG_RSAPSS, TPM_ALG_SHA256, padding.PSS.MAX_LENGTH),
    ("rsa-pss-sha384", "rsa", TPM_ALG_RSAPSS, TPM_ALG_SHA384, padding.PSS.DIGEST_LENGTH),
    ("ecdsa-p256-sha256", "p256", TPM_ALG_ECDSA, TPM_ALG_SHA256, None),
    ("ecdsa-p384-sha384", "p384", TPM_ALG_ECDSA, TPM_ALG_SHA384, None),
]
SELECTIONS = {
    "sha256-all": [PcrSelection(TPM_ALG_SHA256, ALL_24)],
    "sha384-some": [PcrSelection(TPM_ALG_SHA384, (0, 1, 7, 14))],
    "three-banks": [
        PcrSelection(TPM_ALG_SHA1, (0, 2)),
        PcrSelection(TPM_ALG_SHA384, (4, 9, 23)),
        PcrSelection(TPM_ALG_SHA256, (0, 1, 2, 3, 4, 5, 6, 7)),
    ],
}


@pytest.fixture(scope="module")
def keys(rsa_key: Any, p256_key: Any, p384_key: Any) -> dict[str, Any]:
    return {"rsa": rsa_key, "p256": p256_key, "p384": p384_key}


@pytest.mark.parametrize("selection_name", list(SELECTIONS))
@pytest.mark.parametrize(
    ("name", "key_name", "sig_alg", "hash_alg", "salt"), SOFTWARE_CASES, ids=[c[0] for c in SOFTWARE_CASES]
)
def test_software_quote_verifies(
    keys: dict[str, Any],
    name: str,
    key_name: str,
    sig_alg: int,
    hash_alg: int,
    salt: Any,
    selection_name: str,
) -> None:
    private = keys[key_name]
    selections = SELECTIONS[selection_name]
    message, signature, pcrs = _build_quote(private, sig_alg, hash_alg, selections, salt=salt)
    claims = verify_quote(message, signature, private.public_key(), pcrs, b"nonce-1234")
    assert claims.nonce == b"nonce-1234".hex()
    assert (claims.clock, claims.reset_count, claims.restart_count) == (123456789, 5, 1)
    assert claims.firmware_version == 0x0102030405060708
    expected = {
        abi.BANK_NAMES[s.hash_alg]: {i: pcrs[abi.BANK_NAMES[s.hash_alg]][i].hex() for i in s.pcrs}
        for s in selections
    }
    assert claims.pcrs == expected
    assert claims.signer == "000b" + bytes(range(32)).hex()
    # round trips of what we built
    assert marshal_signature(parse_signature(signature)) == signature
    parsed = parse_attest(message)
    assert parsed.pcr_selections == tuple(selections)
    # the recomputed digest uses the signing hash over the concatenated banks in selection order
    concatenated = b"".join(pcrs[abi.BANK_NAMES[s.hash_alg]][i] for s in selections for i in s.pcrs)
    assert parsed.pcr_digest == _HASHLIB[hash_alg](concatenated).digest()
    # tampering
    with pytest.raises(VerificationError, match=r"tpm\.signature_invalid"):
        verify_quote(_flip(message, len(message) - 1), signature, private.public_key(), pcrs, None)
    with pytest.raises(VerificationError, match=r"tpm\.signature_invalid"):
        verify_quote(message, _flip(signature, len(signature) - 1), private.public_key(), pcrs, None)
    last = selections[-1]
    bank = abi.BANK_NAMES[last.hash_alg]
    altered = {**pcrs, bank: {**pcrs[bank], last.pcrs[-1]: bytes(abi.DIGEST_SIZES[last.hash_alg])}}
    with pytest.raises(VerificationError, match=r"tpm\.pcr_digest_mismatch"):
        verify_quote(message, signature, private.public_key(), altered, None)
    with pytest.raises(VerificationError, match=r"tpm\.nonce_mismatch"):
        verify_quote(message, signature, private.public_key(), pcrs, b"nonce-1235")


def test_ecdsa_signature_layout(p256_key: Any) -> None:
    message, wire, _ = _build_quote(p256_key, TPM_ALG_ECDSA, TPM_ALG_SHA256, SELECTIONS["sha256-all"])
    signature = parse_signature(wire)
    assert signature.sig_alg == TPM_ALG_ECDSA and len(signature.r) == len(signature.s) == 32
    assert len(wire) == 2 + 2 + 2 + 32 + 2 + 32
    assert signature.der() == signature.signature and signature.der()[0] == 0x30
    # the DER-only form marshals with minimal integers and still verifies
    minimal = marshal_signature(Signature(TPM_ALG_ECDSA, TPM_ALG_SHA256, signature.signature))
    p256_key.public_key().verify(parse_signature(minimal).der(), message, ec.ECDSA(hashes.SHA256()))
    # swapping r and s breaks it
    swapped = Signature(TPM_ALG_ECDSA, TPM_ALG_SHA256, b"", signature.s, signature.r)
    with pytest.raises(VerificationError, match=r"tpm\.signature_invalid"):
        verify_quote(
            message,
            marshal_signature(swapped),
            p256_key.public_key(),
            _bank_values(SELECTIONS["sha256-all"]),
            None,
        )


def test_sha1_signature_is_refused(rsa_key: Any) -> None:
    selections = [PcrSelection(TPM_ALG_SHA1, (0, 1))]
    pcrs = _bank_values(selections)
    message = marshal_attest(
        pcr_selections=selections, pcr_digest=hashlib.sha1(pcrs["sha1"][0] + pcrs["sha1"][1]).digest()
    )
    signature = Signature(
        TPM_ALG_RSASSA, TPM_ALG_SHA1, rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA1())
    )
    with pytest.raises(VerificationError) as info:
        verify_quote(message, marshal_signature(signature), rsa_key.public_key(), pcrs, None)
    assert info.value.check == "tpm.unsupported_algorithm"
    # the PCR digest cannot be computed with SHA-1 either
    with pytest.raises(VerificationError, match=r"tpm\.unsupported_algorithm"):
        pcr_digest(selections, pcrs, TPM_ALG_SHA1)


@pytest.mark.parametrize(
    "signature",
    [
        Signature(TPM_ALG_HMAC, TPM_ALG_SHA256, bytes(32)),
        Signature(TPM_ALG_NULL, TPM_ALG_NULL, b""),
        Signature(TPM_ALG_ECDAA, TPM_ALG_SHA256, b"", b"\x01", b"\x02"),
        Signature(TPM_ALG_RSASSA, 0x0012, bytes(256)),  # SM3-256
    ],
    ids=["hmac", "null", "ecdaa", "sm3"],
)
def test_unsupported_schemes_are_named(rsa_key: Any, signature: Signature) -> None:
    message = marshal_attest(pcr_selections=[], pcr_digest=hashlib.sha256().digest())
    wire = marshal_signature(signature)
    assert parse_signature(wire).sig_alg == signature.sig_alg
    with pytest.raises(VerificationError) as info:
        verify_quote(message, wire, rsa_key.public_key(), {}, None)
    assert info.value.check == "tpm.unsupported_algorithm"


def test_key_type_mismatch_is_signature_invalid(rsa_key: Any, p256_key: Any) -> None:
    selections = SELECTIONS["sha256-all"]
    message, rsa_sig, pcrs = _build_quote(rsa_key, TPM_ALG_RSASSA, TPM_ALG_SHA256, selections)
    with pytest.raises(VerificationError, match="not an RSA key"):
        verify_quote(message, rsa_sig, p256_key.public_key(), pcrs, None)
    message, ec_sig, pcrs = _build_quote(p256_key, TPM_ALG_ECDSA, TPM_ALG_SHA256, selections)
    with pytest.raises(VerificationError, match="not an EC key"):
        verify_quote(message, ec_sig, rsa_key.public_key(), pcrs, None)


def test_not_generated_and_not_a_quote(rsa_key: Any) -> None:
    selections = SELECTIONS["sha256-all"]
    message, signature, pcrs = _build_quote(
        rsa_key, TPM_ALG_RSASSA, TPM_ALG_SHA256, selections, magic=0x12345678
    )
    assert parse_attest(message).magic == 0x12345678
    with pytest.raises(VerificationError) as info:
        verify_quote(message, signature, rsa_key.public_key(), pcrs, None)
    assert info.value.check == "tpm.not_tpm_generated"
    # A certify attestation (TPM_ST_ATTEST_CERTIFY): name and qualifiedName instead of quote info.
    certify = marshal_attest(
        type=0x8017, attested=tpm2b(b"\x00\x0b" + bytes(32)) + tpm2b(b"\x00\x0b" + bytes(32))
    )
    attest = parse_attest(certify)
    assert attest.type == 0x8017 and attest.pcr_selections == () and attest.pcr_digest == b""
    signature = marshal_signature(
        Signature(TPM_ALG_RSASSA, TPM_ALG_SHA256, rsa_key.sign(certify, padding.PKCS1v15(), hashes.SHA256()))
    )
    with pytest.raises(VerificationError) as info:
        verify_quote(certify, signature, rsa_key.public_key(), {}, None)
    assert info.value.check == "tpm.not_a_quote"


def test_empty_nonce_and_no_nonce(rsa_key: Any) -> None:
    message, signature, pcrs = _build_quote(
        rsa_key, TPM_ALG_RSASSA, TPM_ALG_SHA256, SELECTIONS["sha384-some"], nonce=b""
    )
    assert verify_quote(message, signature, rsa_key.public_key(), pcrs, b"").nonce == ""
    assert verify_quote(message, signature, rsa_key.public_key(), pcrs, None).nonce == ""
    with pytest.raises(VerificationError, match=r"tpm\.nonce_mismatch"):
        verify_quote(message, signature, rsa_key.public_key(), pcrs, b"\x00")


def test_pcr_selection_bitmap() -> None:
    selection = PcrSelection(TPM_ALG_SHA256, (0, 7, 8, 14, 23))
    wire = abi.marshal_pcr_selections([selection])
    assert wire == bytes.fromhex("00000001000b03814180")
    message = marshal_attest(pcr_selections=[selection, PcrSelection(TPM_ALG_SHA1, ())])
    parsed = parse_attest(message)
    assert parsed.pcr_selections == (selection, PcrSelection(TPM_ALG_SHA1, ()))
    # a 4-byte bitmap (PCR 24+) is kept and round-trips byte for byte
    wide = marshal_attest(pcr_selections=[PcrSelection(TPM_ALG_SHA256, (1, 30), size_of_select=4)])
    assert parse_attest(wide).pcr_selections[0].pcrs == (1, 30)
    assert parse_attest(wide).pcr_selections[0].size_of_select == 4
    narrow = bytes.fromhex("00000001000b01ff")
    reparsed = parse_attest(marshal_attest()[:-6] + narrow + tpm2b(b""))
    assert reparsed.pcr_selections == (PcrSelection(TPM_ALG_SHA256, tuple(range(8))),)


def test_pcr_digest_function() -> None:
    selections = [PcrSelection(TPM_ALG_SHA256, (3, 1)), PcrSelection(TPM_ALG_SHA1, (0,))]
    pcrs = {"sha256": {1: b"\x11" * 32, 3: b"\x33" * 32}, "sha1": {0: b"\xaa" * 20}}
    # indices are taken in selection (parsed: ascending) order as given
    assert (
        pcr_digest(selections, pcrs, TPM_ALG_SHA384)
        == hashlib.sha384(b"\x33" * 32 + b"\x11" * 32 + b"\xaa" * 20).digest()
    )
    with pytest.raises(VerificationError, match=r"tpm\.unsupported_algorithm"):
        pcr_digest([PcrSelection(0x0012, (0,))], pcrs, TPM_ALG_SHA256)
    assert pcr_digest([], {}, TPM_ALG_SHA256) == hashlib.sha256(b"").digest()


def test_quote_claims_flat_names() -> None:
    claims = QuoteClaims(
        "6e", 10, 2, 1, True, 7, {"sha256": {0: "aa", 10: "bb"}, "sha384": {23: "cc"}}, "000b"
    )
    assert claims.as_claims() == {
        "tpm.nonce": "6e",
        "tpm.clock": 10,
        "tpm.reset_count": 2,
        "tpm.restart_count": 1,
        "tpm.firmware_version": "7",
        "tpm.pcr.sha256.0": "aa",
        "tpm.pcr.sha256.10": "bb",
        "tpm.pcr.sha384.23": "cc",
    }
    assert claims.clock_state() == ClockState(10, 2, 1)


# ---------------------------------------------------------------------------------------------
# Public areas and AK loading


def test_public_rsa_round_trip_and_name(rsa_key: Any) -> None:
    public = rsa_key.public_key()
    wire = marshal_public(public, scheme=TPM_ALG_RSASSA, scheme_hash=TPM_ALG_SHA256)
    parsed = parse_public(wire)
    assert (parsed.type, parsed.name_alg, parsed.attributes) == (
        TPM_ALG_RSA,
        TPM_ALG_SHA256,
        abi.AK_ATTRIBUTES,
    )
    assert (parsed.scheme, parsed.scheme_hash) == (TPM_ALG_RSASSA, TPM_ALG_SHA256)
    assert parsed.key.public_numbers() == public.public_numbers()
    assert parsed.raw == wire
    assert parsed.name() == b"\x00\x0b" + hashlib.sha256(wire).digest()
    assert wire[18:22] == b"\x00\x00\x00\x00"  # exponent 65537 is marshalled as 0
    assert parse_public_2b(tpm2b(wire)).name() == parsed.name()
    sha384_name = parse_public(marshal_public(public, name_alg=TPM_ALG_SHA384))
    assert sha384_name.name()[:2] == b"\x00\x0c" and len(sha384_name.name()) == 50


def test_public_ecc_round_trip(p256_key: Any, p384_key: Any) -> None:
    for private, curve_id in ((p256_key, TPM_ECC_NIST_P256), (p384_key, TPM_ECC_NIST_P384)):
        wire = marshal_public(private.public_key(), scheme=TPM_ALG_ECDSA, scheme_hash=TPM_ALG_SHA256)
        parsed = parse_public(wire)
        assert parsed.type == TPM_ALG_ECC
        assert struct.unpack_from(">H", wire, 16)[0] == curve_id
        assert parsed.key.public_numbers() == private.public_key().public_numbers()


def test_public_with_symmetric_and_uncommon_exponent() -> None:
    key = rsa.generate_private_key(public_exponent=3, key_size=1024).public_key()
    modulus = key.public_numbers().n.to_bytes(128, "big")
    # a storage-style RSA key: AES-128-CFB symmetric, no scheme, exponent 3
    wire = (
        struct.pack(">HHI", TPM_ALG_RSA, TPM_ALG_SHA256, 0x00030072)
        + tpm2b(b"\x01" * 32)
        + struct.pack(">HHH", 0x0006, 128, 0x0043)
        + struct.pack(">H", TPM_ALG_NULL)
        + struct.pack(">HI", 1024, 3)
        + tpm2b(modulus)
    )
    parsed = parse_public(wire)
    assert parsed.key.public_numbers().e == 3 and parsed.auth_policy == b"\x01" * 32
    assert marshal_public(key, attributes=0x00030072)[:8] == wire[:8]


def test_public_ecdaa_scheme_and_kdf(p256_key: Any) -> None:
    numbers = p256_key.public_key().public_numbers()
    wire = (
        struct.pack(">HHI", TPM_ALG_ECC, TPM_ALG_SHA256, abi.AK_ATTRIBUTES)
        + tpm2b(b"")
        + struct.pack(">H", TPM_ALG_NULL)
        + struct.pack(">HHH", TPM_ALG_ECDAA, TPM_ALG_SHA256, 1)
        + struct.pack(">HHH", TPM_ECC_NIST_P256, 0x0020, TPM_ALG_SHA256)  # KDF1_SP800_56A
        + tpm2b(numbers.x.to_bytes(32, "big"))
        + tpm2b(numbers.y.to_bytes(32, "big"))
    )
    assert parse_public(wire).scheme == TPM_ALG_ECDAA


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda w: w[:-1], "parse.tpm.public.unique.y"),
        (lambda w: w + b"\x00", "parse.tpm.public"),
        (lambda w: b"\x00\x08" + w[2:], "parse.tpm.public.type"),
        (lambda w: w[:2] + b"\x00\x99" + w[4:], "parse.tpm.public.name_alg"),
        (lambda w: w[:14] + b"\x00\x09" + w[16:], "parse.tpm.public.curve_id"),
        (lambda w: w[:-1] + bytes([w[-1] ^ 1]), "parse.tpm.public.unique"),  # off the curve
    ],
)
def test_public_malformed(p256_key: Any, mutate: Any, reason: str) -> None:
    wire = marshal_public(p256_key.public_key())
    with pytest.raises(ParseError) as perr:
        parse_public(mutate(wire))
    assert perr.value.reason == reason


def test_public_rsa_size_mismatch(rsa_key: Any) -> None:
    wire = marshal_public(rsa_key.public_key())
    with pytest.raises(ParseError) as perr:
        parse_public(wire[:14] + b"\x0c\x00" + wire[16:])  # keyBits 3072 with a 2048-bit modulus
    assert perr.value.reason == "parse.tpm.public.unique"
    with pytest.raises(ParseError) as perr:
        parse_public(wire[:14] + b"\x02\x01" + wire[16:])
    assert perr.value.reason == "parse.tpm.public.key_bits"
    with pytest.raises(ParseError) as perr:
        parse_public_2b(tpm2b(wire) + b"\x00")
    assert perr.value.reason == "parse.tpm.public.size"


def _b64url(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


def test_load_ak_forms(rsa_key: Any, p384_key: Any) -> None:
    for private in (rsa_key, p384_key):
        public = private.public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        tpmt = marshal_public(public)
        forms: list[object] = [
            public,
            parse_public(tpmt),
            der,
            pem,
            pem.decode(),
            tpmt,
            tpm2b(tpmt),
            base64.b64encode(der).decode(),
            base64.urlsafe_b64encode(tpm2b(tpmt)).decode().rstrip("="),
        ]
        for form in forms:
            assert load_ak(form).public_numbers() == public.public_numbers(), type(form)
    numbers = rsa_key.public_key().public_numbers()
    jwk = {"kty": "RSA", "e": "AQAB", "n": _b64url(numbers.n, 256)}
    assert load_ak(jwk).public_numbers() == numbers
    ec_numbers = p384_key.public_key().public_numbers()
    ec_jwk = {"kty": "EC", "crv": "P-384", "x": _b64url(ec_numbers.x, 48), "y": _b64url(ec_numbers.y, 48)}
    assert load_ak(ec_jwk).public_numbers() == ec_numbers


def test_real_azure_jwk_matches_its_modulus() -> None:
    jwk = _hcl_ak(base64.urlsafe_b64decode(_json("az-snp-vtpm-evidence-v1.json")["hcl_report"] + "=="))
    key = load_ak(jwk)
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert key.public_numbers().e == 65537
    spki = load_ak(REAL[0].ak)
    assert isinstance(spki, rsa.RSAPublicKey) and spki.key_size == 2048


@pytest.mark.parametrize(
    ("material", "reason"),
    [
        (b"", "parse.tpm.public.type"),
        (b"\x30\x03\x02\x01\x01", "parse.tpm.ak"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "parse.tpm.ak"),
        ("not base64!", "parse.tpm.ak"),
        (12, "parse.tpm.ak"),
        ({"kty": "oct", "k": "AA"}, "parse.tpm.ak.jwk.kty"),
        ({"kty": "RSA", "e": "AQAB"}, "parse.tpm.ak.jwk.n"),
        ({"kty": "RSA", "e": "AQAB", "n": 5}, "parse.tpm.ak.jwk.n"),
        ({"kty": "RSA", "e": "AQAB", "n": "AAAA"}, "parse.tpm.ak.jwk"),
        ({"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"}, "parse.tpm.ak.jwk.crv"),
        ({"kty": "EC", "crv": "P-256", "x": "AQ", "y": "AQ"}, "parse.tpm.ak.jwk"),
        ({"kty": "EC", "crv": ["P-256"], "x": "AQ", "y": "AQ"}, "parse.tpm.ak.jwk"),
    ],
)
def test_load_ak_rejects(material: object, reason: str) -> None:
    with pytest.raises(ParseError) as perr:
        load_ak(material)
    assert perr.value.reason == reason


def test_load_ak_rejects_non_rsa_ec_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    der = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ParseError, match="RSA or EC"):
        load_ak(der)


# ---------------------------------------------------------------------------------------------
# Clock freshness


@pytest.mark.parametrize(
    ("previous", "current", "check"),
    [
        (None, ClockState(5, 1, 0), None),
        (ClockState(100, 2, 1), ClockState(100, 2, 1), None),  # the same quote state again
        (ClockState(100, 2, 1), ClockState(101, 2, 1), None),
        (ClockState(100, 2, 1), ClockState(150, 2, 2), None),
        (ClockState(100, 2, 3), ClockState(40, 3, 0), None),  # reboot: restart zeroed, clock from NV
        (ClockState(100, 2, 1), ClockState(500, 1, 9), "tpm.reset_count_regressed"),
        (ClockState(100, 2, 1), ClockState(500, 2, 0), "tpm.restart_count_regressed"),
        (ClockState(100, 2, 1), ClockState(99, 2, 1), "tpm.clock_regressed"),
    ],
)
def test_check_clock(previous: ClockState | None, current: ClockState, check: str | None) -> None:
    if check is None:
        check_clock(previous, current)
        return
    with pytest.raises(VerificationError) as info:
        check_clock(previous, current)
    assert info.value.check == check


def test_real_quotes_clock_states_in_order() -> None:
    # Two real quotes taken as successive states of one TPM: a higher reset count (a reboot)
    # makes the lower clock acceptable, the reverse order is a rollback.
    first = verify_quote(REAL[1].message, REAL[1].signature, REAL[1].ak, REAL[1].pcrs, None).clock_state()
    later = verify_quote(REAL[4].message, REAL[4].signature, REAL[4].ak, REAL[4].pcrs, None).clock_state()
    assert first == ClockState(3513262, 2, 0) and later == ClockState(2167057, 3, 0)
    check_clock(first, later)
    with pytest.raises(VerificationError, match=r"tpm\.reset_count_regressed"):
        check_clock(later, first)


# ---------------------------------------------------------------------------------------------
# Robustness: parsers raise ParseError only


FUZZ = settings(max_examples=300, deadline=None)


def _only_parse_errors(parser: Any, data: bytes) -> None:
    try:
        parser(data)
    except ParseError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_parse_attest(data: bytes) -> None:
    _only_parse_errors(parse_attest, data)


@FUZZ
@given(st.binary(max_size=40), st.binary(max_size=200))
def test_fuzz_parse_attest_behind_a_valid_header(head: bytes, tail: bytes) -> None:
    _only_parse_errors(
        parse_attest, struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE) + head + tail
    )


@FUZZ
@given(st.integers(0, len(REAL[0].message) - 1), st.integers(0, 255), st.integers(0, 8))
def test_fuzz_parse_attest_mutations(offset: int, value: int, cut: int) -> None:
    data = bytearray(REAL[0].message)
    data[offset] = value
    _only_parse_errors(parse_attest, bytes(data[: len(data) - cut]))


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_parse_signature(data: bytes) -> None:
    _only_parse_errors(parse_signature, data)


@FUZZ
@given(
    st.sampled_from([0x0014, 0x0016, 0x0018, 0x001A, 0x001B, 0x001C, 0x0005, 0x0010]), st.binary(max_size=300)
)
def test_fuzz_parse_signature_known_schemes(sig_alg: int, body: bytes) -> None:
    _only_parse_errors(parse_signature, struct.pack(">H", sig_alg) + body)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_parse_public(data: bytes) -> None:
    _only_parse_errors(parse_public, data)
    _only_parse_errors(parse_public_2b, data)
    _only_parse_errors(load_ak, data)


@FUZZ
@given(
    st.sampled_from([TPM_ALG_RSA, TPM_ALG_ECC]),
    st.sampled_from([TPM_ALG_SHA256, TPM_ALG_SHA1, 0x0099]),
    st.binary(max_size=400),
)
def test_fuzz_parse_public_known_types(key_type: int, name_alg: int, body: bytes) -> None:
    _only_parse_errors(parse_public, struct.pack(">HH", key_type, name_alg) + body)


@FUZZ
@given(st.integers(0, 133), st.integers(0, 255))
def test_fuzz_parse_public_mutations(offset: int, value: int) -> None:
    numbers = ec.derive_private_key(7, ec.SECP256R1()).public_key()
    data = bytearray(marshal_public(numbers))
    data[offset % len(data)] = value
    _only_parse_errors(parse_public, bytes(data))


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_fuzz_verify_quote_raises_only_named_errors(message: bytes, signature: bytes) -> None:
    try:
        verify_quote(message, signature, load_ak(REAL[0].ak), REAL[0].pcrs, None)
    except (ParseError, VerificationError):
        pass

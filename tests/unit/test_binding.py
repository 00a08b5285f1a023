from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from shared.errors import ParseError
from shared.kbs.binding import (
    canonical_json,
    device_runtime_data_digest,
    expected_report_data,
    report_data_matches,
    runtime_data_digest,
)

VECTORS = json.loads((Path(__file__).parents[1] / "data/kbs/report_data_binding.json").read_text())["vectors"]

NONCE = "q6Bq0T6rq7w1v1rQ1JmE9yN0a8Z8q1vKc3b8o2m4N6s="
JWK = {
    "kty": "EC",
    "crv": "P-256",
    "alg": "ECDH-ES+A256KW",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_upstream_vector(vector: dict) -> None:
    canon = canonical_json(vector["input"])
    assert canon.decode() == vector["canonical_json"]
    digest = hashlib.new(vector["hash"], canon).digest()
    assert digest.hex() == vector["digest_hex"]
    padded = digest.ljust(64, b"\0")
    assert padded.hex() == vector["report_data_64_hex"]
    assert report_data_matches(padded, digest)


def test_runtime_data_key_order_and_digest() -> None:
    # JCS orders additional-evidence, nonce, tee-pubkey and the JWK members alphabetically.
    expected_text = (
        f'{{"additional-evidence":"","nonce":"{NONCE}",'
        f'"tee-pubkey":{{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"{JWK["x"]}","y":"{JWK["y"]}"}}}}'
    )
    runtime = {"tee-pubkey": JWK, "nonce": NONCE, "additional-evidence": ""}
    assert canonical_json(runtime).decode() == expected_text
    digest = runtime_data_digest(NONCE, JWK)
    assert digest == hashlib.sha384(expected_text.encode()).digest()
    assert len(digest) == 48


def test_hash_choices_and_padding() -> None:
    assert len(runtime_data_digest(NONCE, JWK, hash_alg="sha512")) == 64
    assert len(runtime_data_digest(NONCE, JWK, hash_alg="sha256")) == 32
    rd = expected_report_data(NONCE, JWK)
    assert len(rd) == 64 and rd[48:] == bytes(16) and rd[:48] == runtime_data_digest(NONCE, JWK)
    assert expected_report_data(NONCE, JWK, hash_alg="sha512") == runtime_data_digest(
        NONCE, JWK, hash_alg="sha512"
    )
    with pytest.raises(ValueError):
        runtime_data_digest(NONCE, JWK, hash_alg="md5")


def test_additional_evidence_and_device_digest_differ() -> None:
    base = runtime_data_digest(NONCE, JWK)
    assert runtime_data_digest(NONCE, JWK, additional_evidence='{"nvidia":{}}') != base
    device = device_runtime_data_digest(NONCE, JWK)
    assert device == hashlib.sha384(canonical_json({"nonce": NONCE, "tee-pubkey": JWK})).digest()
    assert device != base


def test_report_data_matches_checks_all_64_bytes() -> None:
    digest = runtime_data_digest(NONCE, JWK)
    good = digest + bytes(16)
    assert report_data_matches(good, digest)
    assert report_data_matches(good, good)
    # Non-zero padding is a mismatch: the whole field is bound.
    assert not report_data_matches(digest + b"\x01" + bytes(15), digest)
    flipped = bytes([good[0] ^ 1]) + good[1:]
    assert not report_data_matches(flipped, digest)
    assert not report_data_matches(digest, digest)  # 48 bytes is not a report_data field
    # Longer expected values are truncated to the field.
    assert report_data_matches(good, good + b"extra")


def test_canonical_json_rejects_unrepresentable() -> None:
    with pytest.raises(ParseError) as err:
        canonical_json({"n": 2**60})
    assert err.value.reason == "parse.canonical_json"

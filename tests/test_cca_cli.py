"""`remits verify cca`: exit codes 0/1/2 and the JSON it prints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from services.cli import verify_cca
from services.demo.cca_sim import SimulatedCcaPlatform

DATA = Path(__file__).parent / "data" / "cca"
TF_RMM = str(DATA / "realm_tf-rmm_cca_token.cbor")
STORE = str(DATA / "cca_conf_tastore.json")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="remits verify")
    sub = parser.add_subparsers(dest="tee", required=True)
    verify_cca.add_parsers(sub)
    args = parser.parse_args(argv)
    code = args.run(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_tees() -> None:
    assert verify_cca.TEES == ("cca",)


def test_verified_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["cca", TF_RMM, "--ta-store", STORE, "--nonce", "ab" * 64, "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["verified"] is True and doc["form"] == "legacy"
    assert doc["realm"]["challenge"] == "ab" * 64
    assert doc["realm"]["rim"] == "00" * 32 and doc["realm"]["rems"] == ["00" * 32] * 4
    assert doc["realm"]["rpv"].startswith("54686520717569636b")
    assert doc["realm"]["profile"] is None
    assert doc["platform"]["profile"] == "http://arm.com/CCA-SSD/1.0.0"
    assert (
        doc["platform"]["implementation_id"]
        == "7f454c4602010100000000000000000003003e00010000005058000000000000"
    )
    assert (
        doc["platform"]["instance_id"] == "0107060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918"
    )
    assert doc["platform"]["lifecycle"] == 0x3003
    assert [sw["type"] for sw in doc["platform"]["sw_components"]] == ["BL", "M1", "M2", "M3"]
    assert (
        doc["platform"]["sw_components"][0]["measurement"]
        == "07060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918"
    )


def test_verified_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["cca", TF_RMM, "--ta-store", STORE], capsys)
    assert code == 0
    assert out.startswith("verified: Arm CCA token (legacy collection)")
    assert "no --nonce given" in out


def test_json_evidence_and_short_nonce(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = SimulatedCcaPlatform()
    token = sim.realm(bytes(32)).token(b"\x01\x02\x03", form="cmw")
    (tmp_path / "evidence.json").write_text(json.dumps({"token": list(token)}))
    (tmp_path / "ta.json").write_text(json.dumps([sim.ta_entry()]))
    argv = ["cca", str(tmp_path / "evidence.json"), "--ta-store", str(tmp_path / "ta.json"), "--json"]
    code, out, _ = run([*argv, "--nonce", "010203"], capsys)
    assert code == 0 and json.loads(out)["form"] == "cmw"
    assert json.loads(out)["realm"]["challenge"] == "010203" + "00" * 61


@pytest.mark.parametrize(
    ("argv", "check"),
    [
        (["cca", TF_RMM, "--ta-store", STORE, "--nonce", "ab" * 63], "cca.realm.challenge"),
        (["cca", TF_RMM, "--ta-store", str(DATA / "ta-02-ok.json")], "cca.platform.anchor_unknown"),
        (["cca", str(DATA / "cca-token-02.cbor"), "--ta-store", STORE], "cca.platform.anchor_unknown"),
    ],
)
def test_failed_check(argv: list[str], check: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([*argv, "--json"], capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc["verified"] is False and doc["check"] == check and doc["detail"]


def test_bad_signature_is_a_failed_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged = bytearray((DATA / "realm_tf-rmm_cca_token.cbor").read_bytes())
    damaged[-1] ^= 0x01  # last byte of the realm signature
    (tmp_path / "t.cbor").write_bytes(bytes(damaged))
    code, out, _ = run(["cca", str(tmp_path / "t.cbor"), "--ta-store", STORE], capsys)
    assert code == 1 and json.loads(out)["check"] == "cca.realm.signature"


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk").write_bytes(b"\x00junk")
    (tmp_path / "store.json").write_text("{}")
    cases = [
        ["cca", str(tmp_path / "missing.cbor"), "--ta-store", STORE],
        ["cca", TF_RMM, "--ta-store", str(tmp_path / "missing.json")],
        ["cca", str(tmp_path / "junk"), "--ta-store", STORE],
        ["cca", TF_RMM, "--ta-store", str(tmp_path / "store.json")],
        ["cca", TF_RMM, "--ta-store", STORE, "--nonce", "xyz"],
        ["cca", TF_RMM, "--ta-store", STORE, "--nonce", "00" * 65],
    ]
    for argv in cases:
        code, out, err = run(argv, capsys)
        assert code == 2, argv
        assert out == "" and json.loads(err)["error"]


def test_ta_store_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(["cca", TF_RMM], capsys)
    assert exc.value.code == 2

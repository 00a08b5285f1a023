"""Review fixes of the join service that need no NATS/Redis: a statement is checked against the
cluster the user means (F6), an over-long request line and a malformed statement request get a
named answer (F9), and a trust change during a revocation check is not lost (F3)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.cli import main as cli_main
from services.cli.cluster import expected_cluster
from services.join.service import MAX_LINE, JoinService
from services.join.statement import statement_claims, verify_cluster
from shared.ear import EarSigner
from shared.errors import VerificationError
from shared.passport import JwksSource


def _signed_statement(cluster: str) -> tuple[str, EarSigner]:
    signer = EarSigner(ec.generate_private_key(ec.SECP256R1()))
    return signer.sign(statement_claims(cluster, [], "attestation", int(time.time()))), signer


def test_statement_for_another_cluster_is_refused() -> None:
    statement, signer = _signed_statement("dev")
    jwks = JwksSource.from_keys({"keys": [signer.public_jwk()]})
    with pytest.raises(VerificationError) as err:
        verify_cluster(statement, jwks, now=int(time.time()), expected_cluster="prod")
    assert err.value.reason == "cluster.wrong_cluster"
    # The cluster it names, or none asked for: no refusal on that ground.
    assert verify_cluster(statement, jwks, now=int(time.time()), expected_cluster="dev").cluster == "dev"
    assert verify_cluster(statement, jwks, now=int(time.time())).cluster == "dev"


def test_expected_cluster_comes_from_the_flag_or_the_url() -> None:
    assert expected_cluster("https://gw.example/cluster/prod/attestation", None) == "prod"
    assert expected_cluster("http://gw.example:8080/cluster/prod/attestation/", None) == "prod"
    assert expected_cluster("https://gw.example/cluster/prod/attestation", "dev") == "dev"
    assert expected_cluster("statement.json", None) is None
    assert expected_cluster("statement.json", "prod") == "prod"
    assert expected_cluster("https://gw.example/elsewhere", None) is None


def test_cli_cluster_flag_refuses_a_statement_for_another_cluster(tmp_path: Path, capsys: Any) -> None:
    statement, signer = _signed_statement("dev")
    stmt_file, jwks_file = tmp_path / "statement.json", tmp_path / "jwks.json"
    stmt_file.write_text(json.dumps({"statement": statement}))
    jwks_file.write_text(json.dumps({"keys": [signer.public_jwk()]}))
    argv = ["cluster", "verify", str(stmt_file), "--jwks", str(jwks_file), "--json"]
    assert cli_main([*argv, "--cluster", "prod"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["check"] == "cluster.wrong_cluster"
    # Without --cluster a file is checked as the cluster it names (no members: not verified, exit 1,
    # but not for the cluster's name).
    assert cli_main(argv) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cluster"] == "dev"


class _Writer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


def _bare_service(**attrs: Any) -> JoinService:
    service = JoinService.__new__(JoinService)
    for name, value in attrs.items():
        setattr(service, name, value)
    return service


async def test_over_long_request_line_is_a_bad_request() -> None:
    reader = asyncio.StreamReader(limit=MAX_LINE)
    reader.feed_data(b"x" * (MAX_LINE + 10) + b"\n")
    reader.feed_eof()
    writer = _Writer()
    await _bare_service()._connection(reader, writer, None)  # type: ignore[arg-type]
    answer = json.loads(writer.data)
    assert answer["status"] == "rejected" and answer["reason"] == "join.bad_request", answer


@pytest.mark.parametrize("body", [{"cluster": []}, {"cluster": {"a": 1}}, ["cluster"], {}])
async def test_statement_request_with_a_non_string_cluster_gets_a_named_error(body: Any) -> None:
    replies: list[bytes] = []

    async def respond(data: bytes) -> None:
        replies.append(data)

    service = _bare_service(ctx=SimpleNamespace(auth=None), clusters={"prod": object()})
    msg = SimpleNamespace(subject="s", data=json.dumps(body).encode(), headers=None, reply="r", respond=respond)
    await service._on_statement_request(msg)
    assert len(replies) == 1
    assert json.loads(replies[0])["error"] == "join.cluster"


async def test_trust_change_during_a_revocation_check_is_not_lost() -> None:
    calls: list[int] = []
    service = _bare_service(_revocation_check=None, _revocations_dirty=False)

    async def evict_revoked() -> list[str]:
        calls.append(len(calls))
        if len(calls) == 1:
            # A revocation arrives while the first check runs (its snapshot already taken).
            service._on_trust_change()
        await asyncio.sleep(0)
        return [f"node-{len(calls)}"]

    service.evict_revoked = evict_revoked  # type: ignore[method-assign]
    service._on_trust_change()
    assert service._revocation_check is not None
    assert await service._revocation_check == ["node-1", "node-2"]
    assert calls == [0, 1] and not service._revocations_dirty


def test_members_must_reattest_before_their_tokens_expire_by_default() -> None:
    """The cluster statement lists each member's last EAR and a user's check refuses an expired
    one: by default a member attests again (and twice missed is evicted) well within a token's life."""
    from shared.config import Settings

    settings = Settings()
    assert settings.join_reattest_s == 120.0 and settings.token_lifetime_s == 300
    assert settings.join_reattest_s < settings.token_lifetime_s

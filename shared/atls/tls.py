"""Attested TLS channels over asyncio streams: TLS 1.3 for the channel, aTLS verifiers for trust.

OpenSSL checks only that each certificate is issued by the published no-trust issuer (which
anyone can do, see the package docstring). The peer's certificate is then handed to a verifier,
right after the handshake and before any application data reaches the caller; a refused peer is
disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.atls.cert import issuer_pem
from shared.atls.errors import AttestedTlsError
from shared.atls.verify import PeerIdentity, PeerVerifier
from shared.errors import RemitsError

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, PeerIdentity | None], Awaitable[None]]
OnRefused = Callable[[str, str], None]


@dataclass
class AttestedIdentity:
    """This node's aTLS certificate (PEM) and the private key it was made for."""

    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey


def _load_identity(ctx: ssl.SSLContext, identity: AttestedIdentity) -> None:
    key_pem = identity.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    blob = identity.cert_pem + key_pem
    # ssl loads keys from paths only. An anonymous memory file keeps the TEE's key off every
    # filesystem; elsewhere a private temporary directory, removed at once, is the fallback.
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("atls-identity")
        try:
            os.write(fd, blob)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="atls-") as directory:
        path = Path(directory) / "identity.pem"
        path.touch(mode=0o600)
        path.write_bytes(blob)
        ctx.load_cert_chain(path)


def _base_context(protocol: int, identity: AttestedIdentity | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # Only the no-trust issuer, never system CAs: a certificate from a public CA proves nothing
    # about a TEE, and accepting one would let it skip the aTLS extensions' format.
    ctx.load_verify_locations(cadata=issuer_pem().decode("ascii"))
    # Resumed sessions present no certificate, so every connection must run a full handshake for
    # its verifier to see the peer's current certificate.
    ctx.options |= ssl.OP_NO_TICKET
    if identity is not None:
        _load_identity(ctx, identity)
    return ctx


def server_context(identity: AttestedIdentity, *, require_client_cert: bool) -> ssl.SSLContext:
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, identity)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def client_context(identity: AttestedIdentity | None) -> ssl.SSLContext:
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, identity)
    # A node's name says nothing about it; its attestation does.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _peer_certificate(writer: asyncio.StreamWriter) -> bytes:
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise AttestedTlsError("atls.no_certificate", "the peer presented no certificate")
    return der


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5)


async def open_connection(
    host: str,
    port: int,
    *,
    identity: AttestedIdentity | None,
    verifier: PeerVerifier,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, PeerIdentity]:
    """Connect, then verify the server's certificate before returning the streams.

    Raises AttestedTlsError ("atls.handshake" when TLS itself fails) or the verifier's error; the
    connection is closed first. In TLS 1.3 the server judges a client certificate after the
    client's handshake is complete, so a client the server refuses sees the streams close."""
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=client_context(identity))
    except ssl.SSLError as exc:
        raise AttestedTlsError("atls.handshake", str(exc)) from None
    try:
        peer = verifier.verify(_peer_certificate(writer))
    except BaseException:
        await _close(writer)
        raise
    return reader, writer, peer


async def start_server(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    identity: AttestedIdentity,
    verifier: PeerVerifier | None,
    on_refused: OnRefused | None = None,
) -> asyncio.Server:
    """Serve aTLS; with a verifier, clients must present certificates it accepts.

    A refused client is disconnected before ``handler`` runs and ``on_refused(reason, detail)`` is
    called. Without a verifier the handler gets ``None`` as the peer. The connection is closed when
    the handler returns."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: PeerIdentity | None = None
        if verifier is not None:
            try:
                peer = verifier.verify(_peer_certificate(writer))
            except RemitsError as exc:
                await _refuse(writer, exc.reason, exc.detail)
                return
            except Exception as exc:  # a verifier bug must not admit the peer
                log.exception("aTLS verifier failed")
                await _refuse(writer, "atls.verifier_failed", f"{type(exc).__name__}: {exc}")
                return
        try:
            await handler(reader, writer, peer)
        finally:
            await _close(writer)

    async def _refuse(writer: asyncio.StreamWriter, reason: str, detail: str) -> None:
        # Reported first, so the refusal is on record by the time the peer sees the close.
        if on_refused is not None:
            on_refused(reason, detail)
        await _close(writer)

    ctx = server_context(identity, require_client_cert=verifier is not None)
    return await asyncio.start_server(serve, host, port, ssl=ctx)

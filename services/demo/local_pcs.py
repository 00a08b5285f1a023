"""A local Intel PCS (v4 API): the paths ``shared/platforms/tdx/pcs.py`` builds, served over real
HTTP, from the simulated Intel or from collateral files captured from the real PCS.

Served (``{tee}`` is ``sgx`` or ``tdx``)::

    GET /{tee}/certification/v4/tcb?fmspc=<12 hex>      TCB Info        TCB-Info-Issuer-Chain
    GET /{tee}/certification/v4/qe/identity             QE Identity     SGX-Enclave-Identity-Issuer-Chain
    GET /sgx/certification/v4/pckcrl?ca=<ca>[&encoding] PCK CRL         SGX-PCK-CRL-Issuer-Chain
    GET /sgx/certification/v4/rootcacrl                 Root CA CRL     (PCCS's path)
    GET /IntelSGXRootCA.der                             Root CA CRL     (Intel's certificates host)

Issuer chains travel percent-encoded in headers, as PCS sends them. As on PCS, ``encoding=der``
selects a DER CRL and anything else PEM; a missing or malformed parameter is a 400, an unknown
FMSPC or CA a 404. ``update`` and ``tcbEvaluationDataNumber`` are accepted and ignored: one
version of each document is served.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from services.demo.serving import serve
from services.demo.tdx_sim import DEFAULT_FMSPC, SimulatedIntel
from shared.platforms.tdx import pcs

_JSON = "application/json"
_DER_CRL = "application/pkix-crl"
_PEM = "application/x-pem-file"
_FMSPC_HEX = 12


@dataclass(frozen=True, slots=True)
class PcsDocument:
    """One response: body, content type and, when PCS sends one, the issuer chain (PEM)."""

    body: bytes
    content_type: str
    chain_header: str | None = None
    chain_pem: bytes | None = None


DocumentSource = Callable[[], PcsDocument]


def encode_issuer_chain(pem: bytes) -> str:
    """PEM percent-encoded the way PCS puts it in a header (every reserved character escaped)."""
    return quote(pem.decode("ascii"), safe="")


def _fmspc_key(fmspc: bytes | str) -> str:
    text = fmspc.hex() if isinstance(fmspc, bytes) else fmspc
    if len(text) != _FMSPC_HEX or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"FMSPC must be 6 bytes / 12 hex digits, got {text!r}")
    return text.lower()


def _crl_pem(der: bytes) -> bytes:
    return x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)


def _pck_ca_of_crl(der: bytes) -> pcs.PckCa:
    names = x509.load_der_x509_crl(der).issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return pcs.pck_ca_of_issuer(str(names[0].value) if names else "")


def _static(document: PcsDocument) -> DocumentSource:
    return lambda: document


@dataclass
class LocalPcs:
    """Answers on Intel PCS's v4 paths; counts every request.

    Documents are callables so a simulated source can render per request (revocations added after
    start show up) while file-backed sources hand back fixed bytes. ``request_count`` is keyed by
    path, ``target_count`` by path and query exactly as requested (``url[len(base_url):]`` for a
    URL built by ``pcs.py``)."""

    tcb_infos: dict[tuple[pcs.Tee, str], DocumentSource] = field(default_factory=dict)
    qe_identities: dict[pcs.Tee, DocumentSource] = field(default_factory=dict)
    pck_crls: dict[pcs.PckCa, DocumentSource] = field(default_factory=dict)  # DER bodies
    root_ca_crl: DocumentSource | None = None  # DER body
    delay_s: float = 0.0
    request_count: Counter[str] = field(default_factory=Counter)
    target_count: Counter[str] = field(default_factory=Counter)
    base_url: str = ""
    _runner: web.AppRunner | None = None

    # -- sources --

    @classmethod
    def from_simulated(
        cls,
        intel: SimulatedIntel,
        *fmspcs: bytes | str,
        tees: Iterable[pcs.Tee | str] = (pcs.Tee.TDX, pcs.Tee.SGX),
        delay_s: float = 0.0,
    ) -> LocalPcs:
        """Serve the simulated Intel's documents for ``fmspcs`` (default: the simulator's FMSPC)
        for each TEE, its PCK Platform CA CRL and its Root CA CRL."""
        server = cls(delay_s=delay_s)
        wanted = [pcs.Tee(t) for t in tees]
        for fmspc in fmspcs or (DEFAULT_FMSPC,):
            key = _fmspc_key(fmspc)
            for tee in wanted:
                server.tcb_infos[(tee, key)] = _simulated_tcb_info(intel, bytes.fromhex(key), tee)
        for tee in wanted:
            server.qe_identities[tee] = _simulated_qe_identity(intel, tee)
        server.pck_crls[pcs.PckCa.PLATFORM] = lambda: PcsDocument(
            intel.pck_crl_der(), _DER_CRL, pcs.PCK_CRL_ISSUER_CHAIN, intel.pck_crl_issuer_chain_pem
        )
        server.root_ca_crl = lambda: PcsDocument(intel.root_ca_crl_der(), _DER_CRL)
        return server

    @classmethod
    def from_collateral_dir(
        cls,
        directory: Path | str,
        fmspc: bytes | str | None = None,
        tee: pcs.Tee | str | None = None,
        *,
        delay_s: float = 0.0,
    ) -> LocalPcs:
        """Serve real captured collateral (``tcb_info.json``, ``tcb_info_issuer_chain.pem``,
        ``qe_identity.json``, optional ``qe_identity_issuer_chain.pem`` -- the TCB Info chain when
        absent, as both are signed by the TCB Signing key -- and optional ``pck_crl.der``,
        ``pck_crl_issuer_chain.pem``, ``root_ca_crl.der``). ``fmspc`` and ``tee`` default to
        what ``tcb_info.json`` says."""
        server = cls(delay_s=delay_s)
        server.add_collateral_dir(directory, fmspc, tee)
        return server

    def add_collateral_dir(
        self, directory: Path | str, fmspc: bytes | str | None = None, tee: pcs.Tee | str | None = None
    ) -> None:
        """Add one directory's documents; a later directory replaces the QE Identity and CRLs."""
        base = Path(directory)
        tcb_info = (base / "tcb_info.json").read_bytes()
        info = json.loads(tcb_info)["tcbInfo"]
        kind = pcs.Tee(tee) if tee is not None else (pcs.Tee.TDX if info.get("id") == "TDX" else pcs.Tee.SGX)
        key = _fmspc_key(fmspc if fmspc is not None else info["fmspc"])
        tcb_chain = (base / "tcb_info_issuer_chain.pem").read_bytes()
        qe_chain_path = base / "qe_identity_issuer_chain.pem"
        qe_chain = qe_chain_path.read_bytes() if qe_chain_path.exists() else tcb_chain
        self.tcb_infos[(kind, key)] = _static(
            PcsDocument(tcb_info, _JSON, pcs.TCB_INFO_ISSUER_CHAIN, tcb_chain)
        )
        self.qe_identities[kind] = _static(
            PcsDocument(
                (base / "qe_identity.json").read_bytes(), _JSON, pcs.ENCLAVE_IDENTITY_ISSUER_CHAIN, qe_chain
            )
        )
        pck_crl = base / "pck_crl.der"
        if pck_crl.exists():
            der = pck_crl.read_bytes()
            chain_path = base / "pck_crl_issuer_chain.pem"
            # Captures without the chain still serve the CRL: the verifier checks it under the
            # PCK's own issuer, never under this header.
            chain = chain_path.read_bytes() if chain_path.exists() else None
            self.pck_crls[_pck_ca_of_crl(der)] = _static(
                PcsDocument(der, _DER_CRL, pcs.PCK_CRL_ISSUER_CHAIN if chain else None, chain)
            )
        root_crl = base / "root_ca_crl.der"
        if root_crl.exists():
            self.root_ca_crl = _static(PcsDocument(root_crl.read_bytes(), _DER_CRL))

    # -- HTTP --

    async def _answer(self, source: DocumentSource | None, *, pem: bool = False) -> web.Response:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if source is None:
            return web.Response(status=404)
        document = source()
        headers = {"Request-ID": uuid.uuid4().hex}
        if document.chain_header is not None and document.chain_pem is not None:
            headers[document.chain_header] = encode_issuer_chain(document.chain_pem)
        if pem:
            return web.Response(body=_crl_pem(document.body), content_type=_PEM, headers=headers)
        return web.Response(body=document.body, content_type=document.content_type, headers=headers)

    def _count(self, request: web.Request) -> None:
        self.request_count[request.path] += 1
        self.target_count[request.path_qs] += 1

    @staticmethod
    def _tee(request: web.Request) -> pcs.Tee | None:
        try:
            return pcs.Tee(request.match_info["tee"])
        except ValueError:
            return None

    @staticmethod
    def _bad_update(request: web.Request) -> bool:
        update = request.query.get("update")
        return update is not None and update not in {u.value for u in pcs.UpdateType}

    async def _tcb_info(self, request: web.Request) -> web.Response:
        self._count(request)
        tee = self._tee(request)
        if tee is None:
            return web.Response(status=404)
        try:
            key = _fmspc_key(request.query.get("fmspc", ""))
        except ValueError:
            return web.Response(status=400, text="fmspc must be 12 hex digits")
        if self._bad_update(request):
            return web.Response(status=400, text="update must be early or standard")
        return await self._answer(self.tcb_infos.get((tee, key)))

    async def _qe_identity(self, request: web.Request) -> web.Response:
        self._count(request)
        tee = self._tee(request)
        if tee is None:
            return web.Response(status=404)
        if self._bad_update(request):
            return web.Response(status=400, text="update must be early or standard")
        return await self._answer(self.qe_identities.get(tee))

    async def _pck_crl(self, request: web.Request) -> web.Response:
        self._count(request)
        try:
            ca = pcs.PckCa(request.query.get("ca", ""))
        except ValueError:
            return web.Response(status=400, text="ca must be processor or platform")
        encoding = request.query.get("encoding", "pem")
        if encoding not in ("pem", "der"):
            return web.Response(status=400, text="encoding must be pem or der")
        return await self._answer(self.pck_crls.get(ca), pem=encoding == "pem")

    async def _root_crl(self, request: web.Request) -> web.Response:
        self._count(request)
        return await self._answer(self.root_ca_crl)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tee}/certification/v4/tcb", self._tcb_info)
        app.router.add_get("/{tee}/certification/v4/qe/identity", self._qe_identity)
        app.router.add_get("/sgx/certification/v4/pckcrl", self._pck_crl)
        app.router.add_get("/sgx/certification/v4/rootcacrl", self._root_crl)
        app.router.add_get("/IntelSGXRootCA.der", self._root_crl)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL to hand to ``pcs.py`` (``base_url=``)."""
        self._runner, self.base_url = await serve(self.app(), host, port)
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalPcs:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _simulated_tcb_info(intel: SimulatedIntel, fmspc: bytes, tee: pcs.Tee) -> DocumentSource:
    return lambda: PcsDocument(
        intel.tcb_info_json(fmspc, tee=tee), _JSON, pcs.TCB_INFO_ISSUER_CHAIN, intel.tcb_info_issuer_chain_pem
    )


def _simulated_qe_identity(intel: SimulatedIntel, tee: pcs.Tee) -> DocumentSource:
    return lambda: PcsDocument(
        intel.qe_identity_json(tee=tee),
        _JSON,
        pcs.ENCLAVE_IDENTITY_ISSUER_CHAIN,
        intel.tcb_info_issuer_chain_pem,
    )


__all__ = ["LocalPcs", "PcsDocument", "encode_issuer_chain"]

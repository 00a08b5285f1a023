"""Tenants: the namespaces every policy, reference value, resource, admin key, revocation and
audit event belongs to. Pure: names, how a tenant's records are keyed in the shared trust
buckets, and how a request names its tenant.

A tenant's records share the trust buckets with every other tenant's, under a key prefix
(``t=<tenant>.``); the ``default`` tenant's keys carry none, so a store written before tenants
existed is the default tenant's as it stands."""

from __future__ import annotations

import contextlib
import json
import re

DEFAULT = "default"
# A tenant's name is one NATS subject token and one key-prefix token: no dots, no wildcards.
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_PREFIX = "t="
# What a tenant-specific URL path starts with: /t/<tenant>/...
PATH_PREFIX = "/t/"


class BadTenant(ValueError):
    """A tenant name that cannot be one (``field`` is where it came from)."""

    def __init__(self, field: str, name: str) -> None:
        super().__init__(f"{field}: {name!r} is no tenant name (1-31 of a-z, 0-9 and -, not starting with -)")
        self.field = field
        self.name = name


def check_name(name: str, field: str = "tenant") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadTenant(field, str(name))
    return name


def is_name(name: str) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def scoped_key(tenant: str, key: str) -> str:
    """The bucket key of ``key`` (as the default tenant would name it) in ``tenant``."""
    return key if tenant == DEFAULT else f"{_PREFIX}{tenant}.{key}"


def split_key(stored: str) -> tuple[str, str]:
    """(tenant, key within the tenant) of a stored bucket key; ("", stored) when the prefix names
    no valid tenant (such a key belongs to nobody and is never read)."""
    if not stored.startswith(_PREFIX):
        return DEFAULT, stored
    tenant, dot, key = stored[len(_PREFIX) :].partition(".")
    if not dot or not key or not _NAME.fullmatch(tenant) or tenant == DEFAULT:
        return "", stored
    return tenant, key


def reserved_key(key: str) -> bool:
    """Whether a key within a tenant would read as another tenant's (it starts with the prefix)."""
    return key.startswith(_PREFIX)


def key_filter(tenant: str) -> str:
    """A NATS KV key filter of ``tenant``'s keys (for the default tenant, every key: filtered after)."""
    return f"{_PREFIX}{tenant}.>" if tenant != DEFAULT else ">"


def issuer(tenant: str) -> str:
    """The ``iss`` of the EARs signed for ``tenant`` (a relying party checks it, and release reads
    which tenant's keys must have signed a token from it)."""
    return "remits" if tenant == DEFAULT else f"remits/t/{tenant}"


def tenant_of_issuer(iss: object) -> str:
    """The tenant an ``iss`` names ("" for none of this service's)."""
    if iss == "remits":
        return DEFAULT
    if isinstance(iss, str) and iss.startswith("remits/t/"):
        name = iss[len("remits/t/") :]
        if is_name(name) and name != DEFAULT:
            return name
    return ""


def tenant_of_auth(path_tenant: str | None, extra_params: object) -> str:
    """The tenant a KBS ``/auth`` names: the path's (/t/<tenant>/kbs/v0/auth) and/or
    ``extra-params.tenant``; both given must agree; neither, the default tenant."""
    if path_tenant is not None and not is_name(path_tenant):
        raise BadTenant("path", path_tenant)
    named = None
    if isinstance(extra_params, str) and extra_params.strip():
        # kbs-types clients that send extra-params as a JSON string: its tenant counts too, or a
        # guest meant for a tenant would be attested under the default one without a word.
        # Any other string names nothing (the KBS protocol leaves its content to the TEE).
        with contextlib.suppress(ValueError, RecursionError):
            extra_params = json.loads(extra_params)
    if isinstance(extra_params, dict) and "tenant" in extra_params:
        named = extra_params["tenant"]
        if not isinstance(named, str) or not is_name(named):
            raise BadTenant("extra-params.tenant", str(named))
    if path_tenant is not None and named is not None and named != path_tenant:
        raise BadTenant("extra-params.tenant", f"{named} (the path names {path_tenant})")
    return path_tenant or named or DEFAULT

"""The policy core: Rego attestation and resource policies, compiled once per version (rego-cpp via
``regopy``) and evaluated per request. Pure: no I/O beyond reading the packaged defaults."""

from shared.policy import engine as _engine
from shared.policy.engine import *  # noqa: F403  -- the engine's __all__ is this package's API

__all__ = list(_engine.__all__)

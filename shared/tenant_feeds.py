"""Per-tenant audit feeds: a team's own history of the decision stream, without JetStream API rights.

A tenant's audit reader may subscribe to its tenant's live subjects (``credentials``). For the
history it missed while disconnected, the operator creates one durable *push* consumer per reader
on the decision stream: filtered to the tenant's subjects, delivering to a subject only that
reader may subscribe to. The server delivers only while someone is subscribed there, so what the
reader missed comes when it is back, in stream order.

The reader publishes nothing, not even acks, so the feed acknowledges nothing (AckPolicy none):
an ack is a publish whose reply subject the server answers, and nats-server does not check a
reply subject against any permission. Measured: an ack carrying the reply subject
``remits.decision.<other tenant>...`` put an empty message into the other tenant's decisions
(and into the decision stream). The cost is at-most-once: an event sent just as the connection
drops is not sent again: the reader sees a gap in the consumer sequence of its messages' reply
subjects (``Delivery``), and the operator's `remits audit export` has everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from shared import schemas, tenants

PREFIX = "audit-tenant-"


def durable(tenant: str) -> str:
    """The feed's consumer name, which is also its reader's NATS user name and seed file stem
    (``credentials.tenant_audit_user``): a checked tenant name in a fixed prefix."""
    return f"{PREFIX}{tenants.check_name(tenant)}"


def subject(tenant: str) -> str:
    """Where the feed delivers (no stream captures ``remits.audit-feed.>``)."""
    return f"remits.audit-feed.{tenants.check_name(tenant)}"


def config(tenant: str) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        durable_name=durable(tenant),
        description=f"tenant {tenant}'s audit feed (its decisions and admin changes)",
        deliver_subject=subject(tenant),
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.NONE,
        filter_subjects=schemas.tenant_audit_subjects(tenant),
        # No flow control or heartbeats: answering them would need a publish right the reader lacks.
        flow_control=False,
    )


async def ensure(js: JetStreamContext, readers: Iterable[str]) -> list[str]:
    """Create (or update) the feed of each tenant in ``readers``; returns their consumer names."""
    from shared.bus import patiently  # bus imports this module's callers, not the reverse

    names = []
    for tenant in dict.fromkeys(readers):
        feed = config(tenant)
        await patiently(lambda feed=feed: js.add_consumer(schemas.DECISION_STREAM, config=feed))
        names.append(str(feed.durable_name))
    return names


async def drop(js: JetStreamContext, tenant: str) -> bool:
    """Delete ``tenant``'s feed (its reader was removed); whether there was one."""
    try:
        await js.delete_consumer(schemas.DECISION_STREAM, durable(tenant))
    except NotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Delivery:
    """Where one feed message sits, from its reply subject
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``. The
    consumer sequence counts this feed's deliveries one by one (the stream sequence skips other
    tenants' events), so a jump in it is an event the reader never got."""

    stream_seq: int
    consumer_seq: int
    pending: int


def delivery(reply: str, tenant: str) -> Delivery | None:
    """The position of a message of ``tenant``'s feed, or None when ``reply`` is not one of its."""
    parts = reply.split(".")
    if len(parts) >= 12:  # the newer form: $JS.ACK.<domain>.<account hash>.<stream>... .<random>
        parts = parts[:2] + parts[4:11]
    if len(parts) != 9 or parts[:4] != ["$JS", "ACK", schemas.DECISION_STREAM, durable(tenant)]:
        return None
    try:
        return Delivery(stream_seq=int(parts[5]), consumer_seq=int(parts[6]), pending=int(parts[8]))
    except ValueError:
        return None

"""`remits faults`: a fault-injection suite that runs a small fleet under load, injects one fault
at a time (process kills, NATS and Redis outages, a misbehaving vendor, poison messages, clock
skew), lets it clear, and counts what was lost, duplicated or released without an affirming token."""

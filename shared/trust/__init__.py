"""The trust configuration: what an operator provisions (policies, reference values, resources,
revocations, admin keys), kept durably in JetStream key-value buckets and mirrored by workers."""

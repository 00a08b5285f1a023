"""The node-join service of confidential clusters: nodes present their evidence over attested TLS,
the pipeline decides (purpose "join"), an affirming node receives its join material, members
re-attest periodically and are evicted when they fail or miss it (``remits.cluster.<name>.evicted``)."""

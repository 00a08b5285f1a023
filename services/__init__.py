"""REMITS stage workers, the KBS HTTP gateway, the audit consumer and the `remits` CLI."""

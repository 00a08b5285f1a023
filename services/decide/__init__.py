"""REMITS decide."""

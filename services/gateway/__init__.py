"""REMITS gateway."""

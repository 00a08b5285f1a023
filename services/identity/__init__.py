"""REMITS identity."""

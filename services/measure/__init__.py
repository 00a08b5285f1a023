"""REMITS measure."""

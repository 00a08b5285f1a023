"""REMITS demo."""

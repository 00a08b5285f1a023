"""REMITS endorse."""

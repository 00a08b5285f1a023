"""REMITS intake."""

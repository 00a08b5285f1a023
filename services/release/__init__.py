"""REMITS release."""

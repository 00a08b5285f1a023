"""REMITS audit."""

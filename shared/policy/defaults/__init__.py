"""The packaged default policies (``*.rego``); a package so that setuptools ships them as package data."""

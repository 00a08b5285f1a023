"""Benchmarks: the end-to-end fleet bench (`remits bench`) and the single-verification benches."""

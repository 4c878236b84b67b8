"""Benchmarks run from the command line (``megaclass bench ...``); results go to benchmarks/."""

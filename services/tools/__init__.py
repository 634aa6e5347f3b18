"""Tooling: the command line, the local stack and the Triton launcher (not runtime services)."""

"""The package's version, in a module of its own so that _backend (which __init__ imports) can
read it to tell a stale tuned table from a current one."""
__version__ = "0.1.0"

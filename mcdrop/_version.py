"""The version, importable without torch (``mcdrop --help`` and ``--version`` need no more)."""

__version__ = "0.1.0"

"""The one place pycxi's version is written (pyproject.toml reads it, ``pycxi -V`` prints it)."""
__version__ = "0.1.0"

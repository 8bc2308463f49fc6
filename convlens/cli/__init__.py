"""Command-line interface: a thin layer over the library (`convlens --help`)."""
from .app import app, main

__all__ = ["app", "main"]

"""Imports every command module so that each registers its command(s) on the app."""
from . import arch_cmds  # noqa: F401  summary, describe, zoo, gradcheck

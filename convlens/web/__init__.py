"""The explorer: ``convlens serve RUN``, a local web app to walk through a model layer by layer and unit
by unit. Every page has a JSON twin under ``/api``. See :mod:`convlens.web.app`."""
from .app import create_app, serve

__all__ = ["create_app", "serve"]

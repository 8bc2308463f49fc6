"""What the explorer answers to a request it cannot serve: a 404 that suggests the nearest names, a 400
that says what was expected; as an HTML page, or under ``/api`` as a typed JSON body
``{"error": {"type", "status", "message", "suggestions"}}``."""
from __future__ import annotations

import difflib
from typing import Iterable


class WebError(Exception):
    status = 400
    type = "bad_request"

    def __init__(self, message: str, suggestions: Iterable[str] = ()):
        super().__init__(message)
        self.message = message
        self.suggestions = list(suggestions)

    def to_dict(self) -> dict:
        return {"error": {"type": self.type, "status": self.status, "message": self.message,
                          "suggestions": self.suggestions}}


class NotFound(WebError):
    status = 404
    type = "not_found"


class TooLarge(WebError):
    status = 413
    type = "too_large"


def not_found(what: str, name: str, choices: Iterable[str]) -> NotFound:
    """A 404 for the unknown ``what`` ``name``, suggesting the closest of ``choices``."""
    choices = [str(c) for c in choices]
    near = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    shown = ", ".join(choices[:12]) + (f", … ({len(choices)} in all)" if len(choices) > 12 else "")
    return NotFound(f"no {what} {name!r}; the {what}s are: {shown}" if choices else f"no {what} {name!r}", near)

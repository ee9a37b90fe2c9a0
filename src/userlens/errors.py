"""Domain errors, free of HTTP. The API's error layer (api/errors.py) maps each `name` to a status
code and body per API family, so domain code never decides how an error looks on the wire."""

from __future__ import annotations


class DomainError(Exception):
    name = "COMMON_ERROR"

    def __init__(self, details: str = "", name: str | None = None):
        super().__init__(details)
        self.details = details
        if name:
            self.name = name


class InvalidParameter(DomainError):
    name = "INVALID_PARAMETER"


class NotFound(DomainError):
    name = "RESOURCE_NOT_FOUND"


class Conflict(DomainError):
    """The resource's (or a dependency's) state forbids the operation."""

    name = "INVALID_STATUS"

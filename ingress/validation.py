"""Validation errors as RFC 9457 problems that never repeat the input.

FastAPI's own 422 body, and pydantic's error dicts, carry the offending value
(``input``, sometimes ``ctx``, and in ``str(exc)`` an ``[input_value=...]``).
A merchant who put a card number or a customer's email in the wrong field
must not get it back in a response body, a proxy's log or an error tracker.
So the problem built here is made from parts that cannot hold input:

- ``field``: the path to the field, of declared field names, list indices
  and dictionary keys that look like identifiers; any other key (it is data
  too) is shown as ``*``;
- ``message``: pydantic's message only for error types whose message is made
  from the schema alone (``"String should have at most 40 characters"``),
  otherwise a fixed ``"Invalid value"``;
- ``type``: pydantic's error type, e.g. ``string_too_long``.

A body that is not JSON at all is a 400 ``malformed-json`` problem, not a 422.
Register both handlers with ``install_validation_handlers(app)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ingress.problems import Problem
from ledger import limits

# Error types whose message pydantic builds only from the schema (limits,
# expected values, patterns, counts), plus the ones ingress.models raises with
# fixed messages. Any other type, notably "value_error" whose message is
# whatever a validator said, gets GENERIC_MESSAGE.
SCHEMA_ONLY_MESSAGE_TYPES: Final = frozenset(
    {
        "missing",
        "extra_forbidden",
        "model_type",
        "model_attributes_type",
        "dict_type",
        "list_type",
        "string_type",
        "int_type",
        "bool_type",
        "float_type",
        "json_type",
        "none_required",
        "is_instance_of",
        "literal_error",
        "enum",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "multiple_of",
        "finite_number",
        "int_from_float",
        "int_parsing_size",
        "string_too_short",
        "string_too_long",
        "string_pattern_mismatch",
        "string_unicode",
        "too_short",
        "too_long",
        # ingress.models
        "currency_unknown",
        "country_unknown",
        "email_invalid",
    }
)
GENERIC_MESSAGE: Final = "Invalid value"
REDACTED_SEGMENT: Final = "*"
# A dictionary key or unknown field name is shown only when it looks like a
# name: ASCII identifier characters, and no digit run long enough to be part
# of a card or account number. Emails (no "@"), numbers and free text are not.
_NAME_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")
_LONG_DIGIT_RUN = re.compile(r"[0-9]{9}")
_PYDANTIC_KEY_MARKER = "[key]"  # pydantic's last loc element when a dict key itself is bad


def _segment(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and _NAME_LIKE.fullmatch(value) and not _LONG_DIGIT_RUN.search(value):
        return value
    return REDACTED_SEGMENT


def _describe(error: Mapping[str, Any], *, strip_body: bool) -> dict[str, str]:
    loc = list(error.get("loc", ()))
    if strip_body and loc and loc[0] == "body":
        # FastAPI prefixes body errors with "body"; merchants know their body.
        loc = loc[1:]
    error_type = str(error.get("type", "value_error"))
    message = str(error.get("msg", "")) if error_type in SCHEMA_ONLY_MESSAGE_TYPES else ""
    message = message or GENERIC_MESSAGE
    if loc and loc[-1] == _PYDANTIC_KEY_MARKER:
        # The key itself is invalid: it is the input, so it is never shown.
        loc = [*loc[:-2], REDACTED_SEGMENT]
        message = f"Key: {message}"
    field = ".".join(_segment(part) for part in loc) or "(body)"
    return {"field": field, "message": message, "type": error_type}


def describe_errors(
    errors: Iterable[Mapping[str, Any]], *, strip_body: bool = False
) -> list[dict[str, str]]:
    """pydantic or FastAPI error dicts as ``{"field", "message", "type"}``, inputs removed."""
    return [_describe(error, strip_body=strip_body) for error in errors]


def validation_problem(errors: Sequence[Mapping[str, Any]], *, strip_body: bool = False) -> Problem:
    """The problem for a failed validation: 400 for a body that is not JSON, else 422."""
    if any(error.get("type") == "json_invalid" for error in errors):
        # The JSON decoder's message and position are left out too: some
        # decoders quote the text around the error.
        return Problem(
            400, "malformed-json", "Malformed JSON", "The request body is not valid JSON."
        )
    described = describe_errors(errors, strip_body=strip_body)
    listed = described[: limits.VALIDATION_ERRORS_LISTED_MAX]
    count = len(described)
    detail = f"{count} invalid field{'s' if count != 1 else ''} in the request"
    if count > len(listed):
        detail += f"; the first {len(listed)} are listed"
    return Problem(
        422,
        "validation-error",
        "Invalid request",
        detail,
        errors=listed,
        error_count=count,
    )


async def validation_problem_handler(request: Request, exc: Exception) -> Response:
    """FastAPI/Starlette exception handler for ``RequestValidationError`` and
    ``pydantic.ValidationError`` (e.g. from ``ingress.models.within_settings``).

    Typed with ``Exception`` so it fits Starlette's handler signature.
    """
    if isinstance(exc, RequestValidationError):
        problem = validation_problem(exc.errors(), strip_body=True)
    elif isinstance(exc, ValidationError):
        problem = validation_problem(exc.errors(include_url=False, include_input=False))
    else:
        raise TypeError(f"validation_problem_handler cannot handle {type(exc).__name__}")
    return problem.response(instance=request.url.path)


def install_validation_handlers(app: FastAPI) -> None:
    """Render request validation errors, and pydantic errors raised by handlers, as problems.

    A ``pydantic.ValidationError`` that escapes a route is taken as the
    client's, so a route must not let one escape from building its own values
    (a response model, say): catch it there, or it becomes a 422. FastAPI's
    own response validation raises ``ResponseValidationError``, a 500, and is
    not affected.
    """
    app.add_exception_handler(RequestValidationError, validation_problem_handler)
    app.add_exception_handler(ValidationError, validation_problem_handler)

"""The OpenAPI document as the gateway answers, rather than as FastAPI assumes it does.

FastAPI documents a 422 with its own `HTTPValidationError` body on every route that takes a
parameter or a body, while the gateway answers a malformed request with 400 and its error body
(`errors.install_error_handlers`); a refusal declared with only a description gets no body; and
what a middleware refuses (tenancy's 401 and 429) is on no route at all. Clients generated from
the document, and fuzzers checking answers against it, then expect what never comes.

`install_openapi` rewrites the generated document once, when it is first asked for, so routers
added after `create_app` (the control plane, tenancy) are in it:
- FastAPI's 422 becomes a 400 with the error body (a route's own 422, such as the control plane's
  "constraints that contradict the catalog", stays: FastAPI adds none where a route declares one);
- every 4xx and 5xx answer gets the error body of its protocol: `{"error": "..."}`, or OpenAI's
  error object under `/v1/`;
- what `document_everywhere` registered is added to every operation it selects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from kcloud.serving.gateway.errors import OPENAI_PREFIX

_VALIDATION_REF = "#/components/schemas/HTTPValidationError"
#: FastAPI's validation schemas, dropped from the document once no operation refers to them.
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
ERROR_SCHEMA = "ErrorResponse"
OPENAI_ERROR_SCHEMA = "OpenAIError"
_ERROR_SCHEMA_BODY: dict[str, Any] = {
    "title": ERROR_SCHEMA,
    "type": "object",
    "properties": {"error": {"title": "Error", "type": "string"}},
    "required": ["error"],
}
_OPENAI_ERROR_SCHEMA_BODY: dict[str, Any] = {
    "title": OPENAI_ERROR_SCHEMA,
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["message", "type"],
        }
    },
    "required": ["error"],
}
VALIDATION_DESCRIPTION = "malformed request: a parameter or the body fails validation (the message names it)"
_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


@dataclass(frozen=True)
class _Everywhere:
    status: int
    description: str
    applies: Callable[[str, str], bool]


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so `/openapi.json` and `/docs`) answer the rewritten document."""
    generate = app.openapi
    app.state.openapi_everywhere = []

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()  # FastAPI's, cached by it in app.openapi_schema
            rewrite(document, app.state.openapi_everywhere)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def document_everywhere(
    app: FastAPI, status: int, description: str, applies: Callable[[str, str], bool]
) -> None:
    """Document `status` on every operation for which `applies(METHOD, path)` holds.

    For refusals that a middleware makes before any route runs (authentication, rate limits).
    An app whose document `install_openapi` does not manage is left alone.
    """
    registered = getattr(app.state, "openapi_everywhere", None)
    if registered is None:
        return
    registered.append(_Everywhere(status, description, applies))
    app.openapi_schema = None  # regenerate, should it have been asked for already


def rewrite(document: dict[str, Any], everywhere: Sequence[_Everywhere] = ()) -> None:
    """The changes listed in the module's docstring, in place."""
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    for path, item in document.get("paths", {}).items():
        openai = path.startswith(OPENAI_PREFIX)
        if openai:
            schemas.setdefault(OPENAI_ERROR_SCHEMA, _OPENAI_ERROR_SCHEMA_BODY)
        else:
            schemas.setdefault(ERROR_SCHEMA, _ERROR_SCHEMA_BODY)
        ref = f"#/components/schemas/{OPENAI_ERROR_SCHEMA if openai else ERROR_SCHEMA}"
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            validation = responses.get("422")
            if validation is not None and _refers_to(validation, _VALIDATION_REF):
                del responses["422"]
                responses.setdefault("400", {"description": VALIDATION_DESCRIPTION})
            for extra in everywhere:
                if extra.applies(method.upper(), path):
                    responses.setdefault(str(extra.status), {"description": extra.description})
            for status, response in responses.items():
                if status[:1] in ("4", "5") and "content" not in response:
                    response["content"] = {"application/json": {"schema": {"$ref": ref}}}
            operation["responses"] = dict(sorted(responses.items()))
    if not _refers_to(document.get("paths", {}), _VALIDATION_REF):
        for name in _VALIDATION_SCHEMAS:
            schemas.pop(name, None)


def _refers_to(value: Any, ref: str) -> bool:
    if isinstance(value, dict):
        return value.get("$ref") == ref or any(_refers_to(v, ref) for v in value.values())
    if isinstance(value, list):
        return any(_refers_to(v, ref) for v in value)
    return False

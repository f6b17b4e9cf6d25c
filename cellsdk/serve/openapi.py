"""The service's OpenAPI document, made to say exactly what the service does, with and without an API key.

FastAPI's generated document is corrected where it and the service disagree:

- **security** is declared only when the service has a key (then on ``/v1/*`` and ``/metrics``, each with its
  ``401``); a loopback service without a key declares none, because it asks for none;
- **request bodies**: ``/v1/predict`` takes a multipart body whose ``files`` field holds 1 to ``max_images``
  images, or one image as the raw body (never empty);
- **error answers** are the problem documents the service sends (``400`` for a bad query parameter, not
  FastAPI's ``422``), each with its schema;
- with a key, the document names **no model and no label** (``/v1/model``, behind the key, does): the document
  and ``/docs`` stay open to anyone who can reach the port, as the API's shape is no secret.

Examples:
    >>> from cellsdk import Classifier
    >>> from cellsdk.serve.app import create_app
    >>> document = create_app(Classifier.load()).openapi()
    >>> "security" in document["paths"]["/metrics"]["get"]  # no key asked for, none declared
    False
"""

from __future__ import annotations

from typing import Any

from cellsdk.serve.config import ServeConfig
from cellsdk.serve.problems import KINDS, PROBLEM_MEDIA_TYPE

__all__ = ["PROBLEM_SCHEMA", "api_description", "correct_document", "request_body"]

#: an RFC 9457 problem document as the service writes it
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {"type": {"type": "string", "description": "urn:cellsdk:problem:<kind>"},
                   "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string", "description": "one line: the problem and the fix"},
                   "instance": {"type": "string"}},
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PREDICTION = {
    "type": "object", "required": ["label", "confidence", "probabilities", "top_k", "status"],
    "properties": {"name": {"type": ["string", "null"]}, "label": {"type": ["string", "null"]},
                   "index": {"type": ["integer", "null"]}, "confidence": {"type": ["number", "null"]},
                   "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                   "top_k": {"type": "array", "items": {
                       "type": "object", "properties": {"label": {"type": "string"}, "probability": {"type": "number"}}}},
                   "status": {"type": "string"}, "ood_score": {"type": ["number", "null"]},
                   "reasons": {"type": "array", "items": {"type": "string"}},
                   "heatmap": {"type": "string"}, "explanation": {"type": "object"}},
}
_PREDICT_ANSWER = {
    "type": "object", "required": ["model", "predictions"],
    "properties": {"model": {"type": "object", "properties": {"name": {"type": "string"},
                                                              "sha256": {"type": ["string", "null"]}}},
                   "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}},
}
#: route -> the error answers it can give besides 401 (which comes with the key) and 400 (with parameters)
_ERRORS = {
    ("/v1/predict", "post"): {400: "Unusable image or request", 413: "Too large (body, images or pixels)",
                              415: "Not an image", 503: "Busy or shutting down (Retry-After)"},
    ("/readyz", "get"): {503: "Starting or shutting down (Retry-After)"},
}


def api_description(classifier: Any, config: ServeConfig) -> str:
    """The document's description: the model and its classes only when the service has no key.

    Examples:
        >>> from cellsdk import Classifier
        >>> api_description(Classifier.load(), ServeConfig(api_key="k" * 16))
        'Cell classification. The model, its classes and its verification: GET /v1/model (needs the API key).'
    """
    if config.api_key:
        return "Cell classification. The model, its classes and its verification: GET /v1/model (needs the API key)."
    return (f"Cell classification with {classifier.path.name} ({len(classifier.labels)} classes: "
            f"{', '.join(classifier.labels)}).")


def request_body(config: ServeConfig) -> dict[str, Any]:
    """``/v1/predict``'s request body.

    Examples:
        >>> request_body(ServeConfig(max_images=8))["content"]["multipart/form-data"]["schema"]["required"]
        ['files']
    """
    image = {"type": "string", "format": "binary", "minLength": 1}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["files"], "additionalProperties": False,
            "properties": {"files": {"type": "array", "items": image, "minItems": 1, "maxItems": config.max_images,
                                     "description": "one or several images (JPEG, PNG, TIFF, BMP, GIF, WebP)"}}}},
        "image/*": {"schema": image},
        "application/octet-stream": {"schema": image},
    }, "description": f"up to {config.max_images} images in the multipart field `files`, or one image as the raw "
                      f"body; at most {config.max_upload_bytes:,} bytes in all"}


def correct_document(document: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    """Correct FastAPI's generated ``document`` in place (see the module's description) and return it.

    Examples:
        >>> doc = {"paths": {"/healthz": {"get": {"responses": {"200": {}, "422": {}}}}}}
        >>> sorted(correct_document(doc, ServeConfig())["paths"]["/healthz"]["get"]["responses"])
        ['200']
    """
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update({"Problem": PROBLEM_SCHEMA, "Prediction": _PREDICTION, "PredictAnswer": _PREDICT_ANSWER})
    if not config.api_key:
        components.pop("securitySchemes", None)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            errors = dict(_ERRORS.get((path, method), {}))
            if operation.get("parameters") or operation.get("requestBody"):
                errors.setdefault(400, "Bad request (a query parameter or the body)")
            if config.api_key and operation.get("security"):
                errors[401] = KINDS["unauthorized"][1]
            else:
                operation.pop("security", None)
            for status, title in errors.items():
                responses[str(status)] = {"description": title,
                                          "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if "anyOf" in schema:  # FastAPI's `int | None`: a query parameter is absent, never null
                    parameter["schema"] = {k: v for k, v in schema.items() if k != "anyOf"} | next(
                        option for option in schema["anyOf"] if option.get("type") != "null")
    predict = document.get("paths", {}).get("/v1/predict", {}).get("post")
    if predict is not None:
        predict["requestBody"] = request_body(config)
        predict["responses"]["200"] = {"description": "one prediction per image, in request order",
                                       "content": {"application/json": {"schema": {
                                           "$ref": "#/components/schemas/PredictAnswer"}}}}
    if not schemas:
        components.pop("schemas")
    if not components:
        document.pop("components")
    return document

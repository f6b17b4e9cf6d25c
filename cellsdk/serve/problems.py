"""Error answers as RFC 9457 problem documents: one kind per failure, the SDK's one-line message as ``detail``.

Examples:
    >>> err = ApiError("not-an-image", "upload 1 (a.txt): not an image")
    >>> err.status, err.document()["type"], err.document()["title"]
    (415, 'urn:cellsdk:problem:not-an-image', 'Not an image')
"""

from __future__ import annotations

from typing import Any

__all__ = ["API_POLICY", "KINDS", "PROBLEM_MEDIA_TYPE", "SECURITY_HEADERS", "ApiError"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: on every answer, whoever writes it (the app, or the connection layer's own 400 / 408 / 431 / 503)
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]
#: the Content-Security-Policy of every answer that is not one of the service's own pages: nothing may load
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

#: kind -> (HTTP status, title). The table of error answers in docs/guide/serve.md lists the same.
KINDS: dict[str, tuple[int, str]] = {
    "bad-request": (400, "Bad request"),
    "bad-image": (400, "Unusable image"),
    "explanations-unavailable": (400, "The model cannot explain its predictions"),
    "unauthorized": (401, "API key missing or wrong"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "request-timeout": (408, "Request too slow"),
    "too-large": (413, "Request too large"),
    "too-many-images": (413, "Too many images in one request"),
    "image-too-large": (413, "Image has too many pixels"),
    "not-an-image": (415, "Not an image"),
    "unsupported-media-type": (415, "Unsupported request body"),
    "header-too-large": (431, "Request headers too large"),
    # never sent (nobody is left to read it): the outcome of a request whose client hung up, for /metrics
    "client-disconnected": (499, "Client closed the request"),
    "internal": (500, "Internal error"),
    "busy": (503, "Service busy"),
    "shutting-down": (503, "Service shutting down"),
    "not-ready": (503, "Service not ready"),
}


class ApiError(Exception):
    """An error answer: its kind (a key of :data:`KINDS`), one-line detail and extra members / headers."""

    def __init__(self, kind: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.kind = kind
        self.status, self.title = KINDS[kind]
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def document(self, instance: str | None = None) -> dict[str, Any]:
        """The problem document (``type``, ``title``, ``status``, ``detail``, ``instance`` and extensions).

        Examples:
            >>> ApiError("busy", "the queue is full").document("/v1/predict")["status"]
            503
        """
        doc: dict[str, Any] = {"type": f"urn:cellsdk:problem:{self.kind}", "title": self.title,
                               "status": self.status, "detail": self.detail}
        if instance:
            doc["instance"] = instance
        return {**doc, **self.extra}

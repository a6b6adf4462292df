"""The one error type of the serving code: a gRPC status code name plus TF Serving's message.

Why one type for both front ends: TF Serving decides a request's outcome once (a
``tensorflow::Status``) and each protocol only renders it - gRPC as the status code, REST as the
HTTP status of ``http_server.cc``'s table with ``{"error": message}``. Raising ``RpcStatus``
anywhere below the front ends keeps that split.
"""

from __future__ import annotations

# gRPC code -> HTTP status, as tensorflow_serving/model_servers/http_server.cc maps them.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class RpcStatus(Exception):
    """A request failure carrying a gRPC status code name and TF Serving's message text."""

    def __init__(self, code: str, message: str, http: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self._http = http  # for HTTP-only conditions TF Serving has no code for (408)

    @property
    def http_status(self) -> int:
        return self._http or HTTP_STATUS.get(self.code, 500)


def invalid(message: str) -> RpcStatus:
    """INVALID_ARGUMENT, the status of almost every client mistake."""
    return RpcStatus("INVALID_ARGUMENT", message)

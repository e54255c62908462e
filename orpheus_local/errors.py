"""Errors the core raises for the server to map onto HTTP statuses."""


class OrpheusError(RuntimeError):
    pass


class InputError(OrpheusError, ValueError):
    """The request cannot be served as given (HTTP 400); the message starts with the field name."""


class QueueFullError(OrpheusError):
    """More requests waiting than the configured limit (HTTP 429)."""


class NotReadyError(OrpheusError):
    """The engine is loading or draining (HTTP 503)."""


class GenerationError(OrpheusError):
    """Generation of one request failed (HTTP 500); the message is safe to show a client."""

    def __init__(self, request_id: str, message: str = "generation failed"):
        super().__init__(f"{message} (request {request_id})")
        self.request_id = request_id

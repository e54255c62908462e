"""Errors the core raises for the server to map onto HTTP statuses."""


class OrpheusError(RuntimeError):
    pass


class InputError(OrpheusError, ValueError):
    """The request cannot be served as given (HTTP 400): `field` names the input at fault, in the
    library's own terms (text, voice, temperature, ...); each API maps it to its own field name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # rebuilt from its fields where it crosses processes (Ray Serve replicas)
        return type(self), (self.field, self.message)


class QueueFullError(OrpheusError):
    """More requests waiting than the configured limit (HTTP 429)."""


class NotReadyError(OrpheusError):
    """The engine is loading or draining (HTTP 503)."""


class GenerationError(OrpheusError):
    """Generation of one request failed (HTTP 500); the message is safe to show a client."""

    def __init__(self, request_id: str, message: str = "generation failed"):
        super().__init__(f"{message} (request {request_id})")
        self.request_id = request_id
        self.message = message

    def __reduce__(self):
        return type(self), (self.request_id, self.message)

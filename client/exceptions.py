"""Exceptions with Metaflow's names, so `except MetaflowNotFound` works the same with either client."""


class MetaflowException(Exception):
    headline = "Flow failed"

    def __init__(self, msg: str = "", lineno=None):
        self.message = msg
        self.line_no = lineno
        super().__init__(msg)

    def __str__(self) -> str:
        return self.message


class MetaflowNotFound(MetaflowException):
    headline = "Object not found"


class MetaflowNamespaceMismatch(MetaflowException):
    headline = "Object not in the current namespace"

    def __init__(self, namespace):
        super().__init__("Object not in namespace '%s'" % namespace)


class MetaflowInvalidPathspec(MetaflowException):
    headline = "Invalid pathspec"


class MetaflowInternalError(MetaflowException):
    headline = "Internal error"


class MetaflowUnknownUser(MetaflowException):
    headline = "Unknown user"

    def __init__(self):
        super().__init__(
            "Metaflow could not determine your user name based on environment variables ($USERNAME etc.)"
        )


class MetaflowBackendError(MetaflowException):
    """A storage backend or metadata service failed (down, timeout, 5xx after retries). Maps to EIO."""

    headline = "Backend error"

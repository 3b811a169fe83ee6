"""The HTTP layer: routes that parse requests, call the service and write responses."""

from taskplatform.api.app import create_app

__all__ = ["create_app"]

"""The HTTP gateway: Open Inference Protocol v2 and OpenAI-compatible routes over a `Router`."""

from kcloud.serving.gateway.app import create_app
from kcloud.serving.gateway.body_limit import DEFAULT_MAX_BODY_BYTES

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

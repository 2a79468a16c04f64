"""modserve: a self-hosted moderation classifier server with the OpenAI /v1/moderations schema."""

__version__ = "0.1.0"

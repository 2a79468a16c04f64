"""HTTP routes only (FastAPI): OpenAI moderation and KServe v2."""

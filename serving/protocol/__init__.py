"""Wire types, transport-free: the OpenAI moderation schema and KServe v2 tensors."""

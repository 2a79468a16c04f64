"""modserve: a self-hosted moderation classifier server with the OpenAI /v1/moderations schema."""

import logging

__version__ = "0.1.0"

# torchao (CPU int8, serving/quantize.py) is imported by transformers whenever it is installed
# and warns that its CUDA-only extensions (mxfp8, cutlass) do not load on a CPU build of
# torch, and torch's pytree warns about how torchao registers two enums. Both harmless; keep
# them out of every log. Real errors from either still show.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

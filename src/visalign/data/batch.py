"""What a tokenised training batch holds, shared by the model adapter that builds batches and the
packing that rearranges them."""

from __future__ import annotations

# Label value that the loss skips (prompt, image and padding positions): PyTorch's default.
IGNORE_INDEX = -100
# Per-token tensors of a batch (sliced/padded along the sequence); everything else is per image.
TOKEN_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")

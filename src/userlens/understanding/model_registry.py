"""The NCLUE models a Feature can be made with, by name (shown to users as the NCLUE model).

- `ul-hash-v1` (default; understanding/encoder.py): hashed sparse random projection of tokens and
  whole behaviours. Fast (>1M tokens/s), strongest for Tasks trained on a customer's own labels;
  no semantics: a keyword matches only behaviours that contain its words.
- `ul-sem-v1` (understanding/semantic.py): a pretrained multilingual sentence encoder (Korean,
  Japanese, English and more) pooled per user. Keywords land near users whose behaviours *mean*
  the same thing, so it is the model for Custom Attributes; slower on behaviours it has not seen.

Features of different models live in different vector spaces: a Task trained on one model's Feature
can only score Features of the same model.
"""

from __future__ import annotations

from userlens.understanding import encoder

DEFAULT_MODEL = encoder.DEFAULT_MODEL
SEMANTIC_MODEL = "ul-sem-v1"


def available_models() -> list[str]:
    return sorted({*encoder.available_models(), SEMANTIC_MODEL})


def get_model(name: str = DEFAULT_MODEL):
    """An encoder with `encode(sequences) -> (vectors, token_counts)` and `encode_texts(texts)`."""
    if name == SEMANTIC_MODEL:
        from userlens.understanding.semantic import get_semantic_encoder

        return get_semantic_encoder()
    return encoder.get_encoder(name)

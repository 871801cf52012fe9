"""Load a Qwen tokenizer and make sure the image placeholder is one special token."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from config import DEFAULT_IMAGE_TOKEN


def load_tokenizer(name_or_path: str, image_token: str = DEFAULT_IMAGE_TOKEN) -> PreTrainedTokenizerBase:
    """Load the tokenizer and make ``image_token`` one special token (see :func:`with_image_token`)."""
    return with_image_token(AutoTokenizer.from_pretrained(name_or_path), image_token)


def with_image_token(tokenizer: PreTrainedTokenizerBase, image_token: str = DEFAULT_IMAGE_TOKEN) -> PreTrainedTokenizerBase:
    """Add ``image_token`` as a special token when it is missing (in place; returns ``tokenizer``).

    Qwen2/2.5/3 tokenizers do not ship ``<|extra_0|>`` (Qwen-1 did); added, it gets the next free
    id (151665 for Qwen2.5), which lies inside the padded 151,936-row embedding of every Qwen
    checkpoint, so the language model usually needs no resize. Left padding is set because
    generation is batched with left padding.
    """
    if token_id(tokenizer, image_token) is None or image_token not in tokenizer.all_special_tokens:
        # Missing, or present only as a plain added token: special, so user text can never contain it.
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of a whole token, or None when the vocabulary lacks it (without building the
    151,936-entry ``get_vocab()`` dict, which costs ~0.3 s a call)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    return None if tid is None or tid == tokenizer.unk_token_id else tid


def image_token_id(tokenizer: PreTrainedTokenizerBase, image_token: str = DEFAULT_IMAGE_TOKEN) -> int:
    tid = token_id(tokenizer, image_token)
    if tid is None:
        raise ValueError(f"tokenizer has no {image_token!r} token; load it with qwen.load_tokenizer")
    return tid


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn (ChatML's <|im_end|>, and <|endoftext|>)."""
    ids = []
    for tok in ("<|im_end|>", "<|endoftext|>", tokenizer.eos_token):
        tid = token_id(tokenizer, tok) if tok else None
        if tid is not None and tid not in ids:
            ids.append(tid)
    return ids

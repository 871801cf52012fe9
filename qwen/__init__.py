"""Qwen side of the model: tokenizer with the image placeholder, chat prompts, embedding splice."""

from qwen.prompt import PromptRenderer, RenderedPrompt, question_messages, record_messages
from qwen.splice import splice_image_features
from qwen.tokenizer import load_tokenizer

__all__ = [
    "PromptRenderer",
    "RenderedPrompt",
    "load_tokenizer",
    "question_messages",
    "record_messages",
    "splice_image_features",
]

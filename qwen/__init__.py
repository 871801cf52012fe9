"""Qwen side of the model: the tokenizer with the image placeholder and chat prompts with labels.

The splice of image features into the embeddings lives with the forward that calls it
(``model/splice.py``); the exported Jinja chat template lives beside the renderer it must match
(``qwen/chat_template.py``).
"""

from qwen.prompt import PromptRenderer, RenderedPrompt, question_messages, record_messages
from qwen.tokenizer import load_tokenizer

__all__ = ["PromptRenderer", "RenderedPrompt", "load_tokenizer", "question_messages", "record_messages"]

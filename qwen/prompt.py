"""Chat prompts rendered through the tokenizer's own chat template, with labels from token spans.

The template decides the layout (ChatML for Qwen); we never hand-write ``<|im_start|>``. To know
which tokens belong to which message without re-tokenising string pieces (LLaVA's "tokenization
mismatch" bug), every message part is rendered as a private-use sentinel, the rendered string is
split on the sentinels, and each piece is tokenised on its own:

- template text (role headers, ``<|im_end|>``): special tokens are parsed;
- message text: special tokens are *not* parsed, so a user who types ``<|im_end|>`` or the image
  placeholder gets plain text and cannot end the turn or forge image tokens;
- an image part: exactly ``num_image_tokens`` copies of the image token id.

Labels are the token ids of assistant text plus the end-of-turn token that closes it; everything
else is ``IGNORE_INDEX``.

One layout rule, shared with the exported chat template: an image part directly followed by a
text part that does not start with a newline gets a ``"\\n"`` between them, so a question asked as
``[image, "What colour?"]`` renders exactly like a training record ``"<|extra_0|>\\nWhat colour?"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from config import DEFAULT_IMAGE_TOKEN
from qwen.tokenizer import end_of_turn_ids, image_token_id

IGNORE_INDEX = -100
_SENTINEL = re.compile("\ue000(\\d+)\ue001")

Message = dict[str, Any]  # {"role": str, "content": str | list[{"type": "image"} | {"type": "text", "text": str}]}


@dataclass
class RenderedPrompt:
    input_ids: list[int]
    labels: list[int]
    # Number of image parts rendered (each expanded to num_image_tokens ids).
    num_images: int


def question_messages(question: str, system_prompt: str | None = None) -> list[Message]:
    """One user turn asking ``question`` about one image (the layout every script uses)."""
    messages: list[Message] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
    return messages


def record_messages(
    messages: list[dict[str, str]], image_token: str = DEFAULT_IMAGE_TOKEN, system_prompt: str | None = None
) -> list[Message]:
    """Turn a merged data record's messages (placeholder inside the text) into content parts.

    Only trusted data records go through here: the placeholder string in *their* text marks the
    image. Text typed by a user at inference time is passed as a text part and never split.
    """
    out: list[Message] = []
    if system_prompt is not None and not (messages and messages[0]["role"] == "system"):
        out.append({"role": "system", "content": system_prompt})
    for message in messages:
        pieces = message["content"].split(image_token)
        parts: list[dict[str, str]] = []
        for i, piece in enumerate(pieces):
            if i > 0:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": message["role"], "content": parts})
    return out


def _parts(content: Any) -> list[dict[str, str]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = list(content)
    for part in parts:
        if part.get("type") not in ("image", "text"):
            raise ValueError(f"unsupported message part {part!r}: expected type 'image' or 'text'")
    return parts


class PromptRenderer:
    """Renders conversations to ``input_ids`` and ``labels`` for one tokenizer and image size."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_image_tokens: int,
        image_token: str = DEFAULT_IMAGE_TOKEN,
    ) -> None:
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; a Qwen instruct tokenizer is expected")
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id(tokenizer, image_token)
        self.end_of_turn = set(end_of_turn_ids(tokenizer))
        self._template_cache: dict[str, list[int]] = {}
        self._rendered_cache: dict[tuple, str] = {}
        # Message text is batch-encoded straight through the Rust tokenizer (transformers'
        # per-call overhead is ~4x the encoding itself for short texts).
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    def _template_ids(self, text: str) -> list[int]:
        ids = self._template_cache.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(self._template_cache) < 4096:
                self._template_cache[text] = ids
        return ids

    def _text_ids_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of message texts, special tokens *not* parsed, in one batched call."""
        if self._backend is None:
            return [self.tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True) for t in texts]
        # The same switch transformers flips for ``split_special_tokens=True``, put back after.
        previous = self._backend.encode_special_tokens
        self._backend.encode_special_tokens = True
        try:
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        finally:
            self._backend.encode_special_tokens = previous

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> RenderedPrompt:
        """Render ``messages``; with ``add_generation_prompt`` the prompt ends ready for an answer."""
        return self.render_many([messages], add_generation_prompt)[0]

    def render_many(self, conversations: list[list[Message]], add_generation_prompt: bool = False) -> list[RenderedPrompt]:
        """Render many conversations, tokenising all their message texts in one batch (a data set
        renders ~4x faster this way than one conversation at a time)."""
        plans = [self._plan(messages, add_generation_prompt) for messages in conversations]
        texts = sorted({part["text"] for _, slots in plans for _, part in slots if part["type"] == "text"})
        ids = dict(zip(texts, self._text_ids_many(texts)))
        return [self._assemble(rendered, slots, ids) for rendered, slots in plans]

    def _plan(self, messages: list[Message], add_generation_prompt: bool) -> tuple[str, list[tuple[str, dict[str, str]]]]:
        """The template-rendered string with a sentinel per message part, and the parts in order."""
        slots: list[tuple[str, dict[str, str]]] = []  # (role, part) per sentinel index
        templated = []
        for message in messages:
            parts = _parts(message["content"])
            fixed: list[dict[str, str]] = []
            for i, part in enumerate(parts):
                fixed.append(part)
                nxt = parts[i + 1] if i + 1 < len(parts) else None
                if part["type"] == "image" and nxt is not None and nxt["type"] == "text" and not nxt["text"].startswith("\n"):
                    fixed.append({"type": "text", "text": "\n"})
            sentinels = []
            for part in fixed:
                sentinels.append(f"\ue000{len(slots)}\ue001")
                slots.append((message["role"], part))
            if not fixed:  # empty message: keep a slot so its span is still known
                sentinels.append(f"\ue000{len(slots)}\ue001")
                slots.append((message["role"], {"type": "text", "text": ""}))
            templated.append({"role": message["role"], "content": "".join(sentinels)})

        # Message contents are only sentinels, numbered in order, so the rendered string depends
        # on the conversation's structure alone: render each structure once.
        key = (tuple((m["role"], m["content"].count("\ue000")) for m in templated), add_generation_prompt)
        rendered = self._rendered_cache.get(key)
        if rendered is None:
            rendered = self.tokenizer.apply_chat_template(
                templated, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            if len(self._rendered_cache) < 4096:
                self._rendered_cache[key] = rendered
        return rendered, slots

    def _assemble(self, rendered: str, slots: list[tuple[str, dict[str, str]]], text_ids: dict[str, list[int]]) -> RenderedPrompt:
        input_ids: list[int] = []
        labels: list[int] = []
        num_images = 0
        supervise_end = False  # the template text after an assistant message closes its turn
        pos = 0
        seen = 0
        for match in _SENTINEL.finditer(rendered):
            self._add_template(rendered[pos : match.start()], input_ids, labels, supervise_end)
            index = int(match.group(1))
            if index != seen:
                raise ValueError("the chat template reordered or dropped message content; cannot derive spans")
            seen += 1
            role, part = slots[index]
            if part["type"] == "image":
                input_ids.extend([self.image_token_id] * self.num_image_tokens)
                labels.extend([IGNORE_INDEX] * self.num_image_tokens)
                num_images += 1
            else:
                ids = text_ids[part["text"]]
                input_ids.extend(ids)
                labels.extend(ids if role == "assistant" else [IGNORE_INDEX] * len(ids))
            supervise_end = role == "assistant"
            pos = match.end()
        if seen != len(slots):
            raise ValueError(
                f"the chat template dropped {len(slots) - seen} message part(s) (e.g. a system message it ignores)"
            )
        self._add_template(rendered[pos:], input_ids, labels, supervise_end)
        return RenderedPrompt(input_ids=input_ids, labels=labels, num_images=num_images)

    def _add_template(self, text: str, input_ids: list[int], labels: list[int], supervise_end: bool) -> None:
        """Append template text; after an assistant message, supervise up to its end-of-turn token."""
        if not text:
            return
        ids = self._template_ids(text)
        input_ids.extend(ids)
        if not supervise_end:
            labels.extend([IGNORE_INDEX] * len(ids))
            return
        for i, tid in enumerate(ids):
            if tid in self.end_of_turn:
                labels.extend(ids[: i + 1])
                labels.extend([IGNORE_INDEX] * (len(ids) - i - 1))
                return
        labels.extend([IGNORE_INDEX] * len(ids))

"""A chat-completion request, read and checked once: the question, the decoded images and their
hashes, the generation settings, and the limits a gateway enforces.

Every problem is a :class:`ChatError` whose message names the field (the client gets it as a 4xx
JSON error): a gateway in front of a shared model refuses a malformed or oversized request before
it costs a generation. Images are accepted as ``data:`` URLs (decoded, size-checked, hashed) or, for
a remote backend only, as ``http(s)`` URLs passed through untouched (such a request is not cached:
the gateway never fetched the image, so it cannot know what the URL pointed at).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass, field

from PIL import Image

# Request fields that do not change the answer (everything else does, and is part of the cache key).
NOT_SETTINGS = {"messages", "model", "stream", "stream_options", "user"}


class ChatError(ValueError):
    """A request the gateway refuses: the message names the problem; ``status`` is the 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 << 20
    max_image_pixels: int = 4096 * 4096
    max_tokens: int = 1024


@dataclass
class ChatRequest:
    body: dict  # as received (forwarded to a remote backend)
    question: str  # the text of the last user message
    images: list[Image.Image] = field(default_factory=list)  # the last user message's data: images, decoded
    image_sha256: list[str] = field(default_factory=list)  # every data: image of the request, in order
    url_images: int = 0  # http(s) images (remote backends only; never cached)
    key_messages: list[dict] = field(default_factory=list)  # messages with each image as its digest
    settings: dict = field(default_factory=dict)  # what changes the answer besides messages and model
    stream: bool = False
    user: str | None = None
    max_tokens: int | None = None

    @property
    def cacheable(self) -> bool:
        return self.url_images == 0


def decode_image(url: str, where: str, limits: Limits) -> tuple[bytes, Image.Image]:
    """The bytes and RGB image of a ``data:image/...;base64,`` URL, refused (naming ``where``) when
    it is not one, not an image, or has more pixels than the limit (checked from the header, before
    the pixels are decoded)."""
    from visual.preprocess import load_image

    head, comma, data = url.partition(",")
    if not head.startswith("data:") or not comma or ";base64" not in head:
        raise ChatError(f"{where}: expected a data:image/...;base64,... URL")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ChatError(f"{where}: the data: URL is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise ChatError(f"{where}: the image has {width}x{height} = {width * height:,} pixels, more than the "
                            f"gateway's limit of {limits.max_image_pixels:,}", status=413)
        return raw, load_image(image)
    except ChatError:
        raise
    except Exception as exc:  # PIL raises many types for damaged data
        raise ChatError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None


def _content_parts(content, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise ChatError(f"{where}.content: expected a string or a list of content parts")
    return content


def _max_tokens(body: dict, limits: Limits) -> int | None:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ChatError(f"{name}: expected a whole number of at least 1, got {value!r}")
    if value > limits.max_tokens:
        raise ChatError(f"{name}: {value} is more than the gateway's limit of {limits.max_tokens}")
    return value


def parse_chat(body, limits: Limits, header_user: str | None = None) -> ChatRequest:
    """Check a ``POST /v1/chat/completions`` body and read what the gateway needs from it."""
    if not isinstance(body, dict):
        raise ChatError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages: expected a non-empty list of messages")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ChatError(f"{name}: expected a number, got {value!r}")
    request = ChatRequest(body=body, question="", stream=bool(body.get("stream")),
                          max_tokens=_max_tokens(body, limits))
    last_user = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), default=None)
    if last_user is None:
        raise ChatError("messages: no message has role 'user' (the question)")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatError(f"{where}: expected an object with a 'role' and 'content'")
        parts, key_parts = _content_parts(message.get("content"), where), []
        for j, part in enumerate(parts):
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ChatError(f"{where}.content[{j}].text: expected a string")
                key_parts.append({"type": "text", "text": part["text"]})
                if i == last_user:
                    request.question += ("\n" if request.question else "") + part["text"]
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                if not isinstance(url, str):
                    raise ChatError(f"{where}.content[{j}].image_url.url: expected a string")
                if url.startswith(("http://", "https://")):
                    request.url_images += 1
                    key_parts.append({"type": "image_url", "url": url})
                    continue
                raw, image = decode_image(url, f"{where}.content[{j}].image_url", limits)
                from serving.cache import image_digest

                digest = image_digest(raw)
                request.image_sha256.append(digest)
                key_parts.append({"type": "image", "sha256": digest})
                if i == last_user:
                    request.images.append(image)
            else:
                raise ChatError(f"{where}.content[{j}].type: {kind!r} is not supported (text or image_url)")
        request.key_messages.append({"role": message["role"], "content": key_parts})
    request.question = request.question.strip()
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ChatError(f"user: expected a string, got {user!r}")
    request.user = user or header_user or None
    request.settings = {k: v for k, v in body.items() if k not in NOT_SETTINGS}
    return request

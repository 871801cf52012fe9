"""The Jinja chat template an export ships, written to render exactly like ``qwen.prompt``.

Served models (vLLM, ``transformers serve``) build prompts from the template in the export, not
from our renderer; :func:`chat_template` lays prompts out the way :class:`qwen.prompt.PromptRenderer`
does (the export verifies token ids against the renderer before it writes anything).
"""

from __future__ import annotations

import json
import re

_CHATML_SYSTEM = re.compile(r"\A<\|im_start\|>system\n(.*)<\|im_end\|>\n\Z", re.DOTALL)


def default_system_prompt(tokenizer, system_prompt: str | None) -> str | None:
    """The system turn our prompts carry when the caller gives none.

    Our ``Predictor`` passes the checkpoint's ``system_prompt`` as a system message when it is not
    None; otherwise the base template decides (Qwen2.5 inserts "You are Qwen, created by Alibaba
    Cloud. ...", Qwen3 inserts nothing). Read that default off the base template itself.
    """
    if system_prompt is not None:
        return system_prompt
    probe = "\ue000"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
    start = rendered.find("<|im_start|>user\n" + probe)
    if start < 0:
        raise ValueError("the base tokenizer's chat template is not ChatML; cannot derive an export template")
    if start == 0:
        return None
    match = _CHATML_SYSTEM.match(rendered[:start])
    if not match:
        raise ValueError("the base tokenizer's chat template is not ChatML; cannot derive an export template")
    return match.group(1)


def _jinja_string(text: str) -> str:
    """A Jinja string literal for ``text`` (Jinja un-escapes literals like Python does)."""
    return json.dumps(text, ensure_ascii=False)


def chat_template(image_token: str, default_system: str | None) -> str:
    """ChatML with image parts, laid out exactly like ``qwen.prompt.PromptRenderer``.

    - message content is a string or a list of parts; an ``image`` / ``image_url`` part becomes ONE
      ``image_token`` (the processor / vLLM expand it to the image's feature count);
    - an image part directly followed by a text part that does not start with a newline gets a
      ``"\\n"`` in between (the renderer's layout rule: ``<image>\\nquestion`` as in training);
    - without a leading system message, ``default_system`` (when not None) is inserted.

    The loop ``for part in message['content']`` is what vLLM's content-format detection looks
    for: it then passes image parts to the template as ``{"type": "image"}`` instead of inserting
    its default ``<image>`` string (3 tokens in Qwen's vocabulary, not our placeholder).
    """
    system = ""
    if default_system is not None:
        system = (
            "{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}\n"
            "{{- '<|im_start|>system\\n' + " + _jinja_string(default_system) + " + '<|im_end|>\\n' -}}\n"
            "{%- endif -%}\n"
        )
    return (
        "{%- set image_token = " + _jinja_string(image_token) + " -%}\n"
        + system
        + "{%- for message in messages -%}\n"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
        "{%- if message['content'] is string -%}\n"
        "{{- message['content'] -}}\n"
        "{%- elif message['content'] is not none -%}\n"
        "{%- set ns = namespace(after_image=false) -%}\n"
        "{%- for part in message['content'] -%}\n"
        "{%- if part['type'] in ['image', 'image_url', 'input_image'] -%}\n"
        "{{- image_token -}}\n"
        "{%- set ns.after_image = true -%}\n"
        "{%- elif part['type'] == 'text' -%}\n"
        "{%- if ns.after_image and not part['text'].startswith('\\n') -%}{{- '\\n' -}}{%- endif -%}\n"
        "{{- part['text'] -}}\n"
        "{%- set ns.after_image = false -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- endif -%}\n"
        "{{- '<|im_end|>\\n' -}}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "{{- '<|im_start|>assistant\\n' -}}\n"
        "{%- endif -%}\n"
    )



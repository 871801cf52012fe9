"""The model card (``README.md``) of a LLaVA export: what it is and how to serve and query it."""

from __future__ import annotations

from pathlib import Path


def model_card(model, source: Path, output: Path, dtype: str, strategy: str) -> str:
    """``strategy``: the LLaVA ``vision_feature_select_strategy`` the export declares."""
    cfg = model.config
    name = output.name
    return f"""# {name}

A SigLIP + Qwen VQA model exported by `export.py` of siglip-qwen-vqa as a transformers
`LlavaForConditionalGeneration` ({dtype}).

- source checkpoint: `{source}` (fine-tuning: `{cfg.finetune}`{", LoRA merged" if cfg.lora else ""})
- vision: `{cfg.vision_model}` (SigLIP, hidden state {cfg.vision_feature_layer}, `{cfg.vision_feature_select}` ->
  LLaVA `{strategy}`, {cfg.num_image_tokens} image tokens per image)
- language model: `{cfg.language_model}`
- image placeholder: `{cfg.image_token}` (id {cfg.image_token_id}); put one image part in a user message,
  the processor expands it

## Serve with vLLM

```bash
vllm serve {output} --served-model-name {name} --chat-template-content-format openai
```

Ask with `temperature=0` for the greedy answer `infer.py` gives (vLLM samples at temperature 1
unless told otherwise). The image goes in as an `image_url` part; the chat template turns it into
one `{cfg.image_token}` and vLLM expands that to {cfg.num_image_tokens} image tokens.

## Serve with transformers

```bash
transformers serve {output} --host 127.0.0.1 --port 8000
```

With `transformers serve` the model name in requests is the path above. Or, from this repository:
`python infer.py --server http://127.0.0.1:8000 --model {output} --image IMAGE --question TEXT`.

## Ask a question (OpenAI client)

```python
import base64
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="EMPTY")
image = base64.b64encode(open("image.png", "rb").read()).decode()
reply = client.chat.completions.create(
    model="{name}",  # with `transformers serve`: the path passed to it, "{output}"
    messages=[{{"role": "user", "content": [
        {{"type": "image_url", "image_url": {{"url": f"data:image/png;base64,{{image}}"}}}},
        {{"type": "text", "text": "What colour is the square?"}},
    ]}}],
    temperature=0,
    max_tokens=64,
)
print(reply.choices[0].message.content)
```

## Load with transformers

```python
from transformers import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained("{output}")
processor = AutoProcessor.from_pretrained("{output}")
```
"""

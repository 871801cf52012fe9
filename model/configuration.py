"""The composite model's own config: which bases it wires together and how."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig


class VQAConfig(PretrainedConfig):
    """Configuration of :class:`model.VQAModel`.

    The base vision tower and language model are referenced by hub name or path, not copied: a
    checkpoint holds only what training changed. ``finetune`` records what that is:
    ``projector`` (pretrain stage), ``lora`` (projector + LoRA adapter) or ``full`` (projector +
    all language-model weights).
    """

    model_type = "siglip_qwen_vqa"
    # DeepSpeed's "auto" bucket sizes and FLOP estimates read config.hidden_size.
    attribute_map = {"hidden_size": "text_hidden_size"}

    def __init__(
        self,
        vision_model: str | None = None,
        vision_backend: str = "siglip",
        vision_feature_layer: int = -1,
        vision_feature_select: str = "drop_first",
        image_size: int | None = None,
        language_model: str | None = None,
        tokenizer: str | None = None,
        image_token: str = "<|extra_0|>",
        image_token_id: int | None = None,
        num_image_tokens: int | None = None,
        vision_hidden_size: int | None = None,
        text_hidden_size: int | None = None,
        text_vocab_size: int | None = None,
        projector_init_std: float = 0.01,
        projector_hidden_act: str = "gelu",
        finetune: str = "projector",
        lora: dict | None = None,
        train_vision_tower: bool = False,
        train_embeddings: bool = True,
        base_dtype: str = "float32",
        attn_implementation_name: str = "sdpa",
        system_prompt: str | None = None,
        **kwargs,
    ) -> None:
        self.vision_model = vision_model
        self.vision_backend = vision_backend
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select = vision_feature_select
        self.image_size = image_size
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.vision_hidden_size = vision_hidden_size
        self.text_hidden_size = text_hidden_size
        self.text_vocab_size = text_vocab_size
        self.projector_init_std = projector_init_std
        self.projector_hidden_act = projector_hidden_act
        self.finetune = finetune
        self.lora = lora
        self.train_vision_tower = train_vision_tower
        self.train_embeddings = train_embeddings
        self.base_dtype = base_dtype
        self.attn_implementation_name = attn_implementation_name
        self.system_prompt = system_prompt
        super().__init__(**kwargs)


# Registered so that transformers' Auto classes recognise a checkpoint directory (the tokenizer
# saved beside our config.json is loaded with AutoTokenizer, which reads config.json first).
AutoConfig.register(VQAConfig.model_type, VQAConfig, exist_ok=True)

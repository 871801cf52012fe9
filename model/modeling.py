"""The composite VQA model: frozen vision tower -> projector -> Qwen causal LM.

A ``PreTrainedModel`` so that the transformers Trainer, activation checkpointing, DeepSpeed and
``save_pretrained`` work without workarounds. The base tower and LM are loaded from their own
checkpoints (hub names or paths); a checkpoint of this model stores only the weights training
changed (see ``trained_key``) in ``model.safetensors`` next to ``config.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from config import ModelSettings
from model.bases import check_base
from model.checkpoints import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, whole_safetensors
from model.configuration import DTYPES, VQAConfig
from model.projector import Projector
from model.quantization import bnb_config, prepare_for_training
from model.splice import embed_with_images
from qwen.prompt import IGNORE_INDEX
from qwen.tokenizer import image_token_id as lookup_image_token_id
from qwen.tokenizer import load_tokenizer
from visual.preprocess import ImagePreprocessor
from visual.tower import VisionTower, build_vision_tower

# State-dict key endings of the token embeddings and the LM head (frozen when train_embeddings is off).
EMBEDDING_KEYS = ("embed_tokens.weight", "lm_head.weight")


class VQAModel(PreTrainedModel):
    config_class = VQAConfig
    base_model_prefix = "vqa"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: VQAConfig, vision_tower: VisionTower, language_model: nn.Module) -> None:
        super().__init__(config)
        self.vision_tower = vision_tower
        self.multi_modal_projector = Projector(
            vision_tower.hidden_size, config.text_hidden_size, config.projector_init_std, config.projector_hidden_act
        )
        self.language_model = language_model
        self.post_init()

    # -- construction ----------------------------------------------------------------------

    def init_weights(self) -> None:
        """Only the projector is new; the tower and LM arrive with their pretrained weights and
        must not be re-initialised by the generic PreTrainedModel machinery."""
        self.multi_modal_projector.reset_parameters()

    @classmethod
    def from_settings(cls, settings: ModelSettings, train_vision_tower: bool = False) -> "VQAModel":
        """Wire a fresh model from the base checkpoints ``settings`` names (projector randomly
        initialised); ``train_vision_tower`` is training's choice (``train.train_vision_tower``)."""
        return cls._build(VQAConfig.from_settings(settings, train_vision_tower=train_vision_tower), "model.")

    @classmethod
    def _build(cls, config: VQAConfig, where: str, pissa_factors: dict | None = None) -> "VQAModel":
        """``where`` prefixes the setting names in errors (``model.`` or the checkpoint's config);
        ``pissa_factors``: a PiSSA checkpoint's saved starting factors (see :meth:`_wrap_lora`)."""
        for key in ("vision_model", "language_model", "tokenizer"):
            if getattr(config, key):
                check_base(getattr(config, key), where + key)
        dtype = DTYPES[config.base_dtype]
        tower = build_vision_tower(
            config.vision_backend, config.vision_model, config.vision_feature_layer,
            config.vision_feature_select, trainable=config.train_vision_tower, dtype=dtype,
            image_size=config.image_size,
        )
        quantization = bnb_config(config)
        if quantization is None:
            lm = AutoModelForCausalLM.from_pretrained(
                config.language_model, dtype=dtype, attn_implementation=config.attn_implementation_name
            )
        else:  # QLoRA: 4-bit linear layers, the rest in the compute dtype
            compute = DTYPES[config.quantize_compute_dtype]
            lm = AutoModelForCausalLM.from_pretrained(
                config.language_model, dtype=compute, attn_implementation=config.attn_implementation_name,
                quantization_config=quantization,
            )
            lm = prepare_for_training(lm, compute)
        tokenizer_source = config.tokenizer or config.language_model
        tokenizer = load_tokenizer(tokenizer_source, config.image_token)
        token_id = lookup_image_token_id(tokenizer, config.image_token)
        if token_id >= lm.get_input_embeddings().num_embeddings:
            # The placeholder's id lies past the embedding table (not the case for Qwen's padded
            # 151,936 rows); grow it. The new row is never read: the splice overwrites it.
            lm.resize_token_embeddings(len(tokenizer))
        config.image_token_id = token_id
        config.num_image_tokens = tower.num_image_tokens
        tower.preprocessor = dataclasses.replace(tower.preprocessor, aspect=config.image_aspect)
        config.vision_hidden_size = tower.hidden_size
        config.text_hidden_size = lm.config.hidden_size
        config.text_vocab_size = lm.get_input_embeddings().num_embeddings
        lm.requires_grad_(False)
        model = cls(config, tower, lm)
        # Kept (a plain attribute, not a module): loading Qwen's 151,936-token tokenizer takes
        # about 1.5 s, and the caller usually wants the same one (checkpoint_tokenizer, training).
        model.tokenizer, model._tokenizer_source = tokenizer, str(tokenizer_source)
        if config.lora:
            model._wrap_lora(config.lora, pissa_factors)
        model.set_trainable()
        return model

    def _wrap_lora(self, lora: dict, pissa_factors: dict | None = None) -> None:
        """LoRA on the language model only: the adapter is built on ``self.language_model``, so
        module names like ``q_proj`` can never match the vision tower's attention.

        ``method`` and ``init`` are absent from checkpoints written before they existed: plain
        LoRA with peft's default start. A PiSSA start moves the top singular directions of each
        adapted weight from the base into the adapter (peft's SVD, minutes on a CPU for a real
        LM). Its starting factors are kept as buffers (``lora_pissa_A0`` / ``lora_pissa_B0``,
        saved with the adapter), so a load rebuilds the residual base ``W - scaling * B0 A0``
        exactly as peft computed it, without the SVD (``pissa_factors``: those of a checkpoint).
        A checkpoint saved before the factors were kept recomputes the SVD (exact: the residual
        does not depend on the singular vectors' signs).
        """
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        method, init = lora.get("method", "lora"), lora.get("init", "default")
        saved = init == "pissa" and bool(pissa_factors)
        cfg = LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]), bias="none",
            use_dora=method == "dora", use_rslora=method == "rslora",
            init_lora_weights=True if saved else {"default": True, "gaussian": "gaussian", "pissa": "pissa"}[init],
        )
        self.language_model = get_peft_model(self.language_model, cfg)
        if init != "pissa" or pissa_factors == {}:  # {}: an older PiSSA checkpoint, no factors to keep
            return
        for name, module in self.language_model.named_modules():
            if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
                continue
            if saved:
                prefix = f"language_model.{name}."
                a0, b0 = pissa_factors[prefix + "lora_pissa_A0"], pissa_factors[prefix + "lora_pissa_B0"]
                base = module.get_base_layer()
                with torch.no_grad():
                    base.weight.data = (base.weight.float() - module.scaling["default"] * b0 @ a0).to(base.weight.dtype)
            else:
                a0 = module.lora_A["default"].weight.detach().float().clone()
                b0 = module.lora_B["default"].weight.detach().float().clone()
            module.register_buffer("lora_pissa_A0", a0)
            module.register_buffer("lora_pissa_B0", b0)

    def configure_training(self, finetune: str, lora: dict | None = None, train_embeddings: bool = True) -> None:
        """Choose what trains: ``projector``, ``lora`` (projector + adapter) or ``full``; a full
        fine-tune may keep the token embeddings and the LM head frozen (``train_embeddings``):
        with Qwen's 151,936-row vocabulary they are most of a small model's weights."""
        if finetune not in ("projector", "lora", "full"):
            raise ValueError(f"finetune must be projector, lora or full, got {finetune!r}")
        if finetune == "lora":
            if lora is None:
                raise ValueError("finetune=lora needs LoRA settings")
            if self.config.lora is None:
                self._wrap_lora(lora)
            self.config.lora = dict(lora)
        elif self.config.lora is not None:
            raise ValueError("this model already carries a LoRA adapter; cannot switch to " + finetune)
        self.config.finetune = finetune
        self.config.train_embeddings = bool(train_embeddings)
        self.set_trainable()

    def fold_adapter(self) -> None:
        """Merge the LoRA adapter into the language model's weights and drop it, so that a new
        adapter can start from this model (B = 0: exactly this model) and "adapter off" means
        this model, not the bare base (the DPO reference)."""
        if self.config.lora is not None:
            self.language_model = self.language_model.merge_and_unload()
            self.config.lora = None
        self.config.finetune = "full"

    def set_trainable(self) -> None:
        finetune = self.config.finetune
        self.requires_grad_(False)
        self.multi_modal_projector.requires_grad_(True)
        if finetune == "full":
            self.language_model.requires_grad_(True)
            if not self.config.train_embeddings:
                self.get_input_embeddings().requires_grad_(False)
                self.get_output_embeddings().requires_grad_(False)
        elif finetune == "lora":
            for name, param in self.language_model.named_parameters():
                if "lora_" in name:
                    param.requires_grad_(True)
        self.vision_tower.trainable = bool(self.config.train_vision_tower)
        self.vision_tower.requires_grad_(self.vision_tower.trainable)
        self.vision_tower.train(self.training)

    def compile_layers(self, **options) -> None:
        """``torch.compile`` each transformer layer of the LM and of the tower, one graph per
        layer: Inductor fuses the norms, activations and bf16 casts between the matmuls, which
        in eager mode took half of a GPU step (bench/RESULTS.md). Layer by layer rather than the
        whole model, so the image splice, the supervised-position gather and the batches' varying
        lengths stay outside the graphs (no graph breaks; a new length recompiles one small graph
        once, then dynamic shapes take over). ``options`` go to ``torch.compile``."""
        for layer in [*self.decoder.layers, *self.vision_tower.blocks()]:
            layer.compile(**options)

    # -- submodules ------------------------------------------------------------------------

    @property
    def preprocessor(self) -> ImagePreprocessor:
        """Pixels exactly as the vision tower was trained on them."""
        return self.vision_tower.preprocessor

    @property
    def causal_lm(self) -> nn.Module:
        """The Qwen ``*ForCausalLM`` (inside the PEFT wrapper when LoRA is on)."""
        lm = self.language_model
        return lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    @property
    def decoder(self) -> nn.Module:
        return self.causal_lm.model

    @property
    def lm_head(self) -> nn.Module:
        return self.causal_lm.lm_head

    @property
    def text_config(self):
        return self.causal_lm.config

    def get_input_embeddings(self) -> nn.Module:
        return self.causal_lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    # -- forward ---------------------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, num_image_tokens, text_hidden]`` projected features."""
        return self.multi_modal_projector(self.vision_tower(pixel_values))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        return embed_with_images(
            self.get_input_embeddings(), input_ids, self.config.image_token_id, pixel_values, self.image_features
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """With ``labels``, ``logits`` holds only the supervised positions (``[n_supervised, vocab]``,
        in row-major order): the vocabulary projection is the most expensive op of a small model
        and a VQA answer is a handful of tokens in a sequence of hundreds. Without labels,
        ``logits`` is ``[batch, seq, vocab]`` for the last ``logits_to_keep`` positions (0: all)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        if labels is not None and use_cache is None:
            use_cache = False  # a training step must not build a KV cache (the LM's default is True)
        outputs = self.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        hidden = outputs.last_hidden_state
        loss = None
        if labels is not None:
            loss, logits = self.supervised_loss(hidden, labels, num_items_in_batch)
        else:
            keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
            logits = self.lm_head(hidden[:, keep])
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)

    def supervised_loss(self, hidden: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None):
        """Next-token cross-entropy computed from the supervised positions' logits only.

        Summed and divided by ``num_items_in_batch`` when the Trainer passes it (the number of
        supervised tokens over all gradient-accumulation micro-batches, so accumulation matches
        one large batch), else averaged over this batch's supervised tokens.
        """
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[:, :-1][mask])
        total = F.cross_entropy(logits.float(), targets[mask], reduction="sum")
        if num_items_in_batch is None:
            num_items_in_batch = mask.sum()
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        denominator = num_items_in_batch if bool(num_items_in_batch > 0) else 1
        return total / denominator, logits

    # -- checkpoints -----------------------------------------------------------------------

    def trained_key(self, key: str) -> bool:
        """Whether a state-dict key belongs to what this model's training changes."""
        if key.startswith("multi_modal_projector."):
            return True
        if key.startswith("vision_tower.") and self.config.train_vision_tower:
            return True
        if key.startswith("language_model."):
            if self.config.finetune == "full":
                return self.config.train_embeddings or not key.endswith(EMBEDDING_KEYS)
            if self.config.finetune == "lora":
                return "lora_" in key
        return False

    def save_pretrained(self, save_directory, state_dict=None, is_main_process: bool = True, **kwargs) -> None:
        """Write config.json + model.safetensors holding only the trained weights.

        Accepts the Trainer's gathered ``state_dict`` (DeepSpeed ZeRO-3 passes one). Tied weights
        (Qwen's lm_head = embed_tokens) are stored once; loading re-ties them.
        """
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        if state_dict is None:
            state_dict = self.state_dict()
        tensors, seen = {}, set()
        for key, value in state_dict.items():
            if not self.trained_key(key):
                continue
            ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape)) if value.device.type != "meta" else None
            if ptr is not None and ptr in seen:
                continue
            seen.add(ptr)
            tensors[key] = value.detach().to("cpu").contiguous()
        save_file(tensors, os.path.join(save_directory, WEIGHTS_NAME), metadata={"format": "pt"})
        self.config.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        *,
        vision_model: str | None = None,
        language_model: str | None = None,
        dtype: str | None = None,
        quantize: str | None = None,
        config: VQAConfig | None = None,
        **_: object,
    ) -> "VQAModel":
        """Load a checkpoint written by ``save_pretrained``: rebuild from the referenced bases,
        then load the trained weights. ``vision_model``/``language_model`` override the base
        references (e.g. when the bases live at another path on this machine); ``config``: the
        checkpoint's config when the caller has already read it (it is not changed)."""
        path = Path(checkpoint)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{path}: not a model checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        config = copy.deepcopy(config) if config is not None else VQAConfig.from_pretrained(path)
        if config.model_type != VQAConfig.model_type:
            raise ValueError(f"{path}: config.json is a {config.model_type!r} model, not {VQAConfig.model_type!r}")
        if vision_model:
            config.vision_model = vision_model
        if language_model:
            config.language_model = language_model
        if dtype:
            config.base_dtype = dtype
        if quantize:  # e.g. "none": a QLoRA checkpoint on its full-precision base (export, comparisons)
            config.quantize = quantize
        if config.tokenizer is None and (path / "tokenizer_config.json").is_file():
            config.tokenizer = str(path)
        if config.base_checkpoint:  # trained on top of another checkpoint: rebuild that one first
            model = cls.from_pretrained(config.base_checkpoint, vision_model=vision_model,
                                        language_model=language_model, dtype=dtype)
            model.fold_adapter()
            model.configure_training(config.finetune, config.lora, train_embeddings=config.train_embeddings)
            model.config.base_checkpoint = config.base_checkpoint
        else:
            model = cls._build(config, f"{path / CONFIG_NAME}: ", _pissa_factors(path / WEIGHTS_NAME, config.lora))
        model.load_trained_weights(path / WEIGHTS_NAME)
        # Like transformers' from_pretrained: a loaded model predicts (dropout off, a trainable
        # tower's eval mode); the Trainer switches to train mode itself.
        return model.eval()

    def checkpoint_tokenizer(self, checkpoint: str | os.PathLike):
        """The tokenizer saved beside ``checkpoint``, else the configured one (image token added)."""
        saved = Path(checkpoint) / "tokenizer_config.json"
        source = str(Path(checkpoint) if saved.is_file() else (self.config.tokenizer or self.config.language_model))
        if source == getattr(self, "_tokenizer_source", None):
            return self.tokenizer  # the one the model was built with: not loaded twice
        return load_tokenizer(source, self.config.image_token)

    def load_trained_weights(self, weights_file: str | os.PathLike, partial: bool = False) -> None:
        """Load a checkpoint's trained weights. A checkpoint of this configuration must hold all
        of them; with ``partial`` it may hold a subset: a run that starts from an earlier stage
        (a pretrain projector, or an sft run on other data) takes what that stage trained and
        initialises the rest as usual. Either way, a weight this model lacks is an error, so a
        checkpoint of another layout (LoRA vs full) is never half-loaded by name mismatch."""
        if not whole_safetensors(Path(weights_file)):
            raise CheckpointError(
                f"{weights_file}: not a whole safetensors file (cut off while saving, or not safetensors at all); "
                "use another checkpoint"
            )
        state = load_file(str(weights_file))
        own = self.state_dict()
        unexpected = [k for k in state if k not in own]
        if unexpected:
            raise ValueError(f"{weights_file}: weights that this model does not have: {unexpected[:5]}")
        expected = {k for k in own if self.trained_key(k)}
        missing = sorted(expected - set(state) - self._tied_duplicates(own))
        if missing and not partial:
            raise ValueError(f"{weights_file}: incomplete checkpoint, missing {len(missing)} weights: {missing[:5]}")
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)

    @staticmethod
    def _tied_duplicates(state: dict) -> set[str]:
        seen, dupes = set(), set()
        for key, value in state.items():
            ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if ptr in seen:
                dupes.add(key)
            seen.add(ptr)
        return dupes


def _pissa_factors(weights: Path, lora: dict | None) -> dict | None:
    """A PiSSA checkpoint's starting factors (``{}`` when it predates them); None for other adapters."""
    if not lora or lora.get("init") != "pissa" or not whole_safetensors(weights):
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return {key: f.get_tensor(key).float() for key in f.keys() if "lora_pissa_" in key}

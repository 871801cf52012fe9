"""Frozen vision towers that return the per-patch features the projector consumes.

Features are the encoder's hidden state at ``vision_feature_layer`` (``hidden_states[layer]``
in transformers' indexing: 0 is the patch embeddings, -1 the last encoder layer *before* the
post-layernorm), so that the exported LLaVA graph computes exactly what we trained on. Only the
layers up to the chosen one are run. ``vision_feature_select`` then keeps all positions
(``full``) or drops the first one (``drop_first``: the seed's 729 -> 728 layout; LLaVA's
``default`` strategy).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from visual.preprocess import ImagePreprocessor


def select_features(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "drop_first":
        return hidden[:, 1:]
    if mode == "full":
        return hidden
    raise ValueError(f"vision_feature_select must be 'drop_first' or 'full', got {mode!r}")


def _num_layers_to_run(layer: int, num_layers: int) -> int:
    """How many encoder layers produce ``hidden_states[layer]``."""
    index = layer if layer >= 0 else num_layers + 1 + layer
    if not 0 <= index <= num_layers:
        raise ValueError(f"vision_feature_layer {layer} is out of range for a tower with {num_layers} layers")
    return index


class VisionTower(nn.Module):
    """Common interface: ``forward(pixel_values [B,3,H,W]) -> features [B, num_image_tokens, hidden]``.

    Frozen by default: parameters do not require grad, the module stays in eval mode whatever
    ``train()`` is called with (dropout and similar stay off), and the forward runs without
    autograd. With ``trainable=True`` (the tiny demo tower) it trains like any module.
    """

    hidden_size: int
    num_positions: int
    preprocessor: ImagePreprocessor

    def __init__(self, feature_layer: int, feature_select: str, trainable: bool) -> None:
        super().__init__()
        self.feature_layer = feature_layer
        self.feature_select = feature_select
        self.trainable = trainable

    def finish_init(self) -> None:
        self.requires_grad_(self.trainable)
        self.train(False)

    @property
    def num_image_tokens(self) -> int:
        return self.num_positions - (1 if self.feature_select == "drop_first" else 0)

    def train(self, mode: bool = True) -> "VisionTower":
        return super().train(mode and self.trainable)

    def hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The transformer layers that ``hidden_state`` runs, in order."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values``: normalised floats, or the uint8 pixels the training loader hands over
        (normalised here, on the tower's device; see ``ImagePreprocessor.resized``)."""
        if pixel_values.dtype == torch.uint8:
            pixel_values = self.preprocessor.normalize(pixel_values)
        if self.trainable and torch.is_grad_enabled():
            hidden = self.hidden_state(pixel_values)
        else:
            with torch.no_grad():
                hidden = self.hidden_state(pixel_values)
        return select_features(hidden, self.feature_select)


class SiglipTower(VisionTower):
    """transformers' ``SiglipVisionModel`` (loaded without its pooling head, which is unused)."""

    def __init__(self, name_or_path: str, feature_layer: int = -1, feature_select: str = "drop_first",
                 trainable: bool = False, dtype: torch.dtype = torch.float32, model=None) -> None:
        super().__init__(feature_layer, feature_select, trainable)
        from transformers import SiglipVisionModel

        if model is None:
            model = SiglipVisionModel.from_pretrained(name_or_path, vision_use_head=False, dtype=dtype)
        self.model = model
        cfg = model.config
        self.config = cfg
        self.hidden_size = cfg.hidden_size
        self.num_positions = (cfg.image_size // cfg.patch_size) ** 2
        self.layers_to_run = _num_layers_to_run(feature_layer, cfg.num_hidden_layers)
        self.preprocessor = siglip_preprocessor(name_or_path, cfg.image_size)
        self.finish_init()

    def hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.embeddings(pixel_values.to(self.model.embeddings.patch_embedding.weight.dtype))
        for layer in self.blocks():
            hidden = layer(hidden, None)
        return hidden

    def blocks(self) -> list[nn.Module]:
        return list(self.model.encoder.layers[: self.layers_to_run])


def siglip_preprocessor(name_or_path: str, image_size: int) -> ImagePreprocessor:
    """Mean/std from the checkpoint's preprocessor_config.json when present (SigLIP: 0.5/0.5), and
    padding to a square when it says ``do_pad`` (a LLaVA export of a model trained with
    ``model.image_aspect: pad``: its ``LlavaImageProcessor`` pads, as stock transformers and vLLM
    do, so answering the export locally must pad too)."""
    import json

    from transformers.utils import cached_file

    mean, std, aspect = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash"
    try:
        path = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if path:
        cfg = json.loads(Path(path).read_text())
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
        aspect = "pad" if cfg.get("do_pad") else "squash"
    return ImagePreprocessor(size=image_size, image_mean=mean, image_std=std, aspect=aspect)


class TimmTower(VisionTower):
    """Any timm ViT (``local-dir:PATH`` or a timm hub name), features from its block outputs."""

    def __init__(self, name_or_path: str, feature_layer: int = -1, feature_select: str = "drop_first",
                 trainable: bool = False, dtype: torch.dtype = torch.float32, image_size: int | None = None) -> None:
        super().__init__(feature_layer, feature_select, trainable)
        import timm

        name = f"local-dir:{name_or_path}" if Path(name_or_path).is_dir() else name_or_path
        kwargs = {"img_size": image_size} if image_size else {}
        self.model = timm.create_model(name, pretrained=True, num_classes=0, **kwargs).to(dtype)
        depth = len(self.model.blocks)
        index = _num_layers_to_run(feature_layer, depth)
        if index == 0:
            raise ValueError("vision_feature_layer 0 (patch embeddings) is not supported for timm towers")
        self.block_index = index - 1
        data_cfg = timm.data.resolve_model_data_config(self.model)
        size = data_cfg["input_size"][-1]
        grid = self.model.patch_embed.grid_size
        self.hidden_size = self.model.embed_dim
        self.num_positions = grid[0] * grid[1] + self.model.num_prefix_tokens
        self.preprocessor = ImagePreprocessor(
            size=size, image_mean=tuple(data_cfg["mean"]), image_std=tuple(data_cfg["std"])
        )
        self.finish_init()

    def hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches, prefix = self.model.forward_intermediates(
            pixel_values.to(self.model.patch_embed.proj.weight.dtype), indices=[self.block_index],
            return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True, stop_early=True,
        )[0]
        return torch.cat([prefix, patches], dim=1) if prefix is not None else patches

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks[: self.block_index + 1])


def build_vision_tower(backend: str, name_or_path: str, feature_layer: int, feature_select: str,
                       trainable: bool = False, dtype: torch.dtype = torch.float32,
                       image_size: int | None = None) -> VisionTower:
    if backend == "siglip":
        return SiglipTower(name_or_path, feature_layer, feature_select, trainable, dtype)
    if backend == "timm":
        return TimmTower(name_or_path, feature_layer, feature_select, trainable, dtype, image_size)
    raise ValueError(f"vision_backend must be 'siglip' or 'timm', got {backend!r}")

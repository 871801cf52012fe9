"""The one place where projected image features enter the language model's input embeddings."""

from __future__ import annotations

import torch


def splice_image_features(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_token_id: int,
    image_features: torch.Tensor,
) -> torch.Tensor:
    """Replace the embedding rows of the image tokens by the projected image features.

    ``inputs_embeds`` is ``[batch, seq, hidden]``; ``image_features`` is ``[num_images, n, hidden]``
    in the order the images appear in the batch (row-major). Each image occupies exactly ``n``
    consecutive image-token positions; any other count is an error rather than a silent
    truncation or a misaligned scatter.
    """
    mask = input_ids == image_token_id
    num_images, per_image = image_features.shape[:2]
    found = int(mask.sum())
    if found != num_images * per_image:
        raise ValueError(
            f"image token count mismatch: the input has {found} image tokens but {num_images} image(s) x "
            f"{per_image} features = {num_images * per_image} were given"
        )
    per_row = mask.sum(dim=1)
    if bool((per_row % max(per_image, 1)).any()):
        raise ValueError(
            f"image token count mismatch: rows hold {per_row.tolist()} image tokens, "
            f"not a multiple of {per_image} per image"
        )
    features = image_features.reshape(-1, image_features.shape[-1]).to(inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)

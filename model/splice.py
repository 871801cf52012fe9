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


def embed_with_images(embedding, input_ids: torch.Tensor, image_token_id: int,
                      pixel_values: torch.Tensor | None, image_features) -> torch.Tensor:
    """Token embeddings with the images spliced in; ``image_features(pixel_values)`` projects them.

    Image tokens without pixels are an error: their embedding rows are placeholders, never inputs.
    """
    embeds = embedding(input_ids)
    if pixel_values is not None:
        return splice_image_features(embeds, input_ids, image_token_id, image_features(pixel_values))
    if bool((input_ids == image_token_id).any()):
        raise ValueError("the input holds image tokens but no pixel_values were given")
    return embeds

"""model/splice.py: projected image features land exactly on the image tokens; count mismatches are errors."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_model, question_batch


def test_splice_places_features_exactly_and_checks_counts(tiny, tokenizer):
    model = make_model(tiny).eval()
    ids, mask, pixels = question_batch(model, tokenizer, ["Is there a red circle?", "Where?"])
    with torch.no_grad():
        embeds = model.embed(ids, pixels)
        feats = model.image_features(pixels)
        plain = model.get_input_embeddings()(ids)
    image_mask = ids == model.config.image_token_id
    assert int(image_mask.sum()) == 2 * model.config.num_image_tokens
    for row in range(2):
        torch.testing.assert_close(embeds[row][image_mask[row]], feats[row], atol=0, rtol=0)
        torch.testing.assert_close(embeds[row][~image_mask[row]], plain[row][~image_mask[row]], atol=0, rtol=0)
    with pytest.raises(ValueError, match="image token count mismatch"):
        model.embed(ids, pixels[:1])
    broken = ids.clone()
    broken[0, int(image_mask[0].nonzero()[0])] = tokenizer.pad_token_id  # one image token too few
    with pytest.raises(ValueError, match="image token count mismatch"):
        model.embed(broken, pixels)
    with pytest.raises(ValueError, match="no pixel_values"):
        model.embed(ids, None)

"""Answers of a fixed length, the end of turn never chosen: what the GGUF benches time.

:func:`ours` and :func:`llama` each return ``answer(tokens)``, which generates exactly ``tokens``
answer tokens greedily for one (image, question) (and checks it did): through our model
(``inference.generation.generate`` with no end-of-turn ids) or through llama.cpp (its
end-of-generation ids banned by a logits processor). The prompt and image are prepared once, outside
the timed call; llama.cpp encodes the image inside it, as it always does.
"""

from __future__ import annotations

from collections.abc import Callable


def ours(predictor, image, question: str) -> Callable[[int], None]:
    from inference.generation import SamplingSettings, generate

    ids, mask, pixels = predictor.prepare([image], [question])

    def answer(tokens: int) -> None:
        result = generate(predictor.model, ids, pixels, mask, SamplingSettings(max_new_tokens=tokens), (),
                          predictor.tokenizer.pad_token_id)
        assert len(result.sequences[0]) == tokens

    return answer


def llama(predictor, image, question: str) -> Callable[[int], None]:
    """``predictor``: an ``inference.gguf.GGUFPredictor``."""
    from llama_cpp import LogitsProcessorList

    from inference.generation import SamplingSettings

    end = predictor.end_ids()

    def ban_end(input_ids, scores):
        scores[end] = -float("inf")
        return scores

    requests = {}

    def answer(tokens: int) -> None:
        if tokens not in requests:
            requests[tokens] = predictor.request(predictor.payload(image, question, SamplingSettings(max_new_tokens=tokens)))
        reply = predictor.llm.create_chat_completion(**requests[tokens], logits_processor=LogitsProcessorList([ban_end]))
        assert reply["usage"]["completion_tokens"] == tokens, reply["usage"]

    return answer

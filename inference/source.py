"""Which model answers, and the one place its predictor is opened.

A :class:`ModelSource` is a local checkpoint (a ``checkpoint-N``, a run directory or a LLaVA
export), a GGUF export (llama.cpp) or an OpenAI-compatible server (vLLM, ``transformers serve``).
``infer.py``, ``evaluate.py`` and ``gui.py`` all describe the model they were given as one and call
:meth:`ModelSource.open`; every predictor it returns has the same ``answer``/``stream``/
``check_question`` interface. :meth:`ModelSource.identity` names the model by what it is, for the
``produced_by`` record of a file of answers (``dataset.produced_by``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from errors import UserError, one_line


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of ``checkpoint``, ``gguf`` or ``server``, with what opening it needs."""

    checkpoint: str | None = None
    gguf: str | None = None
    server: str | None = None
    model: str | None = None  # server: the model name (default: the first one the server lists)
    api_key: str | None = None  # server: bearer token (default: $OPENAI_API_KEY)
    timeout: float = 600.0  # server: seconds to wait for a reply
    device: str | None = None  # checkpoint: cuda, cpu, ...
    dtype: str | None = None  # checkpoint: weights dtype (default: as trained or exported)
    quantize: str | None = None  # checkpoint: overrides a QLoRA checkpoint's own model.quantize

    def describe(self) -> str:
        if self.server:
            return f"server {self.server}" + (f" ({self.model})" if self.model else "")
        return f"GGUF {self.gguf}" if self.gguf else f"checkpoint {self.checkpoint}"

    def open(self, concurrency: int = 8, confidence: bool = False):
        """The predictor: :class:`inference.predictor.Predictor` for a checkpoint or LLaVA export,
        :class:`inference.gguf.GGUFPredictor` for a GGUF export (``confidence``: with the answers'
        log-probabilities, which llama.cpp only computes when asked), or
        :class:`inference.remote.RemotePredictor` for a server (``concurrency`` requests at once).
        A model that cannot be loaded is a :class:`errors.UserError` naming it."""
        if self.gguf:
            from inference.gguf import GGUFPredictor

            return GGUFPredictor(self.gguf, logprobs=confidence)
        if self.server:
            from inference.remote import RemotePredictor

            return RemotePredictor(self.server, self.model, timeout=self.timeout, api_key=self.api_key,
                                   concurrency=concurrency)
        from inference.predictor import Predictor

        try:
            return Predictor.from_checkpoint(self.checkpoint, dtype=self.dtype, device=self.device,
                                             quantize=self.quantize)
        except UserError:
            raise
        except (FileNotFoundError, ValueError, OSError, KeyError) as exc:
            message = one_line(exc)
            raise UserError(message if str(Path(self.checkpoint)) in message
                            else f"{self.checkpoint}: cannot load: {message}") from None

    def identity(self) -> dict:
        """Which model answers, known before it loads: a checkpoint or GGUF export by the
        fingerprint of its files (and the dtype / quantization it is loaded with), a server by its
        address and model name (``model``, else the first one the server lists)."""
        from inference import identity

        if self.server:
            remote = self.open(concurrency=1)
            return {"server": remote.base, "model": remote.model_name()}
        if self.gguf:
            return identity.gguf_identity(self.gguf)
        found = identity.checkpoint_identity(self.checkpoint)
        found.update(dtype=self.dtype, quantize=self.quantize)
        return found

"""Answer with a GGUF export (``export.py --format gguf``) through llama.cpp, in this process.

:class:`GGUFPredictor` is how ``infer.py --gguf``, ``evaluate.py --gguf`` and ``gui.py --gguf`` check an
export with the commands a user already knows. llama-cpp-python's ``create_chat_completion``
takes and returns OpenAI chat-completion dicts, so the request building and reply reading are
:class:`inference.remote.ChatCompletionsPredictor`'s, shared with ``--server``.

The chat handler is llama-cpp-python's LLaVA-1.5 one (mtmd: the mmproj encodes the image, its
embeddings go where the template names the image) with the export's own template and no default
system message, so the prompt is training's token for token. Greedy answers match ``infer.py``'s
only with llama.cpp's repetition penalty off and no min-p filter, which are its defaults otherwise.
"""

from __future__ import annotations

from pathlib import Path

from errors import UserError
from inference.remote import ChatCompletionsPredictor, RemoteError

INSTALL = "pip install -r requirements-gguf.txt (or: make gguf)"
TEMPLATE_FILE = "chat_template.llama-cpp-python.jinja"


def require_llama_cpp():
    """The ``llama_cpp`` module, or a one-line error saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--gguf needs llama-cpp-python: {INSTALL}") from None
    return llama_cpp


def export_files(path: str | Path) -> tuple[Path, Path, Path]:
    """``(model, mmproj, llama-cpp-python template)`` of a GGUF export: ``path`` is the export
    directory (holding one ``model-*.gguf``) or one of its ``model-<type>.gguf`` files."""
    path = Path(path)
    if path.is_file():
        directory, models = path.parent, [path]
    elif path.is_dir():
        directory, models = path, sorted(path.glob("model-*.gguf"))
    else:
        raise UserError(f"{path}: no such GGUF export (give the directory export.py --format gguf wrote)")
    if not models:
        raise UserError(f"{path}: no model-*.gguf in it; is it an export.py --format gguf directory?")
    if len(models) > 1:
        names = ", ".join(m.name for m in models)
        raise UserError(f"{path}: holds {names}; give one of them as --gguf {path}/FILE")
    mmprojs = sorted(directory.glob("mmproj-*.gguf"))
    if len(mmprojs) != 1:
        raise UserError(f"{directory}: expected one mmproj-*.gguf beside {models[0].name}, found {len(mmprojs)}")
    template = directory / TEMPLATE_FILE
    if not template.is_file():
        raise UserError(f"{directory}: {TEMPLATE_FILE} is missing; export again with export.py --format gguf")
    return models[0], mmprojs[0], template


def quiet_mtmd() -> None:
    """Route llama.cpp's multimodal library's log through llama-cpp-python's logger, as its text
    library's already is: otherwise every answer prints the prompt and image timings to stderr,
    whatever ``verbose`` says (llama-cpp-python 0.3.36 leaves mtmd on its default logger)."""
    import ctypes

    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp._logger import llama_log_callback

    mtmd.mtmd_log_set(llama_log_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(llama_log_callback, ctypes.c_void_p(0))


class TokenLogprobs:
    """A logits processor that changes nothing and records the log-probability (raw logits,
    temperature 1, as ``infer.py``'s confidence) of each token generated.

    llama-cpp-python's own ``logprobs`` needs ``logits_all`` (logits of every prompt position) and
    then ranks the whole vocabulary in Python at every step: 6 s for a 25-token demo answer instead
    of 60 ms. A processor sees each step's logits before sampling; the token chosen from them is the
    last input id at the next step, and the step that ended the answer chose an end-of-generation
    token, taken as the likeliest of those."""

    def __init__(self, end_ids: list[int]) -> None:
        self.end_ids = end_ids
        self.logprobs: list[tuple[int, float]] = []
        self._pending = None

    def __call__(self, input_ids, scores):
        import numpy as np

        if self._pending is not None:
            token = int(input_ids[-1])
            self.logprobs.append((token, float(self._pending[token])))
        shifted = scores.astype(np.float64) - scores.max()
        self._pending = shifted - np.log(np.exp(shifted).sum())
        return scores

    def finish(self, stopped: bool) -> list[tuple[int, float]]:
        """``(token, log-probability)`` per generated token; ``stopped``: the answer ended with an
        end-of-generation token (not at the length limit)."""
        if stopped and self._pending is not None and self.end_ids:
            best = max(self.end_ids, key=lambda i: self._pending[i])
            self.logprobs.append((best, float(self._pending[best])))
        return self.logprobs


class GGUFPredictor(ChatCompletionsPredictor):
    """A GGUF export answered by llama-cpp-python. ``logprobs``: also return each answer's
    confidence (its tokens' mean log-probability, end-of-turn token included, as ``infer.py``)."""

    def __init__(self, path: str | Path, logprobs: bool = False, context: int = 4096,
                 threads: int | None = None) -> None:
        llama_cpp = require_llama_cpp()
        from llama_cpp.llama_chat_format import Llava15ChatHandler

        quiet_mtmd()
        self.model_file, mmproj, template = export_files(path)
        chat_format = template.read_text(encoding="utf-8")

        class ExportChatHandler(Llava15ChatHandler):
            DEFAULT_SYSTEM_MESSAGE = None  # the template inserts the system turn training used
            CHAT_FORMAT = chat_format

        try:
            self.llm = llama_cpp.Llama(
                model_path=str(self.model_file), chat_handler=ExportChatHandler(clip_model_path=str(mmproj), verbose=False),
                n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"{self.model_file}: llama.cpp cannot load it: {exc}") from None
        self._logprobs = logprobs
        self._end_ids = None

    def end_ids(self) -> list[int]:
        """The ids llama.cpp ends an answer at (its vocabulary's end-of-generation set)."""
        if self._end_ids is None:
            import llama_cpp

            vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            self._end_ids = [i for i in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]
        return self._end_ids

    def describe(self) -> str:
        return f"GGUF {self.model_file}"

    def request(self, payload: dict) -> dict:
        """llama-cpp-python's ``create_chat_completion`` arguments for an OpenAI request."""
        request = {k: v for k, v in payload.items() if k not in ("model", "logprobs")}
        # infer.py's sampling, not llama.cpp's defaults (repeat penalty 1.1, top-k 40, min-p 0.05)
        request.update(repeat_penalty=1.0, min_p=0.0, top_k=payload.get("top_k", 0), top_p=payload.get("top_p", 1.0))
        return request

    def complete(self, payload: dict) -> dict:
        from llama_cpp import LogitsProcessorList

        request = self.request(payload)
        recorder = TokenLogprobs(self.end_ids()) if payload.get("logprobs") else None
        if recorder is not None:
            request["logits_processor"] = LogitsProcessorList([recorder])
        try:
            reply = self.llm.create_chat_completion(**request)
        except ValueError as exc:  # e.g. a prompt longer than the context
            raise RemoteError(f"{self.model_file.name}: {exc}") from None
        if recorder is not None:
            choice = reply["choices"][0]
            choice["logprobs"] = {"content": [
                {"token": self.llm.detokenize([token]).decode("utf-8", "replace"), "logprob": logprob}
                for token, logprob in recorder.finish(choice.get("finish_reason") == "stop")]}
        return reply

    def complete_stream(self, payload: dict):
        try:
            yield from self.llm.create_chat_completion(**self.request(payload))
        except ValueError as exc:
            raise RemoteError(f"{self.model_file.name}: {exc}") from None

    def close(self) -> None:
        self.llm.close()

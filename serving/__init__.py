"""The production gateway behind ``serve.py``: an OpenAI-compatible FastAPI app in front of one or
more model backends (our model in-process, or any OpenAI-compatible server such as vLLM), with an
answer cache (``cache.py``), a sticky weighted A/B split (``routing.py``), a JSON-lines request log
(``requestlog.py``) and Prometheus metrics (``metrics.py``); ``app.py`` wires them together."""

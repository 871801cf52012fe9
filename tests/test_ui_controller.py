"""ui/controller.py without a display: streaming, history, cancellation, errors, both backends.

The checkpoint is real (tests/conftest.py: answering_checkpoint): the tiny model trained for a few
steps to answer every question with ANSWER, loaded through ``Predictor.from_checkpoint``.
"""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from inference.generation import SamplingSettings
from tests.conftest import ANSWER, free_port
from inference.source import ModelSource
from ui.controller import BackendError, Controller, PredictorBackend, ServerBackend

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def local_backend(answering_checkpoint) -> PredictorBackend:
    backend = PredictorBackend(ModelSource(checkpoint=str(answering_checkpoint), device="cpu"), SamplingSettings(max_new_tokens=24))
    backend.load()
    return backend


def poll_until(controller: Controller, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    events = []
    while time.monotonic() < deadline:
        events += controller.poll()
        if predicate():
            return events
        time.sleep(0.005)
    raise AssertionError(f"timed out; status {controller.status!r}, history {controller.history}")


def test_answers_stream_into_history_and_a_new_image_starts_a_new_one(local_backend, gui_images):
    c = Controller(local_backend)
    c.load_backend()
    c.wait_idle()
    assert c.model_ready and not c.busy and "checkpoint" in c.status
    with pytest.raises(ValueError, match="open an image"):
        c.ask("What colour is the square?")
    c.open_image(gui_images["red"])
    with pytest.raises(ValueError, match="type a question"):
        c.ask("   ")
    turn = c.ask("What colour is the square?")
    assert c.busy and c.answering and not c.can_ask
    with pytest.raises(ValueError, match="still busy"):
        c.ask("And the circle?")
    events = c.wait_idle()
    assert turn.state == "done" and turn.answer == ANSWER, c.history
    pieces = [e.text for e in events if e.kind == "piece"]
    assert len(pieces) > 3 and "".join(pieces) == ANSWER  # streamed, not delivered at once
    c.ask("Where is the circle?")
    c.wait_idle()
    assert [t.question for t in c.history] == ["What colour is the square?", "Where is the circle?"]
    assert all(t.answer == ANSWER for t in c.history)
    assert c.to_dict()["history"][1] == {"question": "Where is the circle?", "answer": ANSWER,
                                          "state": "done", "error": None}

    c.open_image(gui_images["blue"])
    assert c.history == [] and c.image_path == gui_images["blue"] and c.can_ask
    c.ask("What is in the picture?")
    c.wait_idle()
    assert len(c.history) == 1 and c.history[0].answer == ANSWER
    c.close()


@pytest.mark.parametrize("kind", ["text", "broken", "missing"])
def test_a_file_that_is_not_an_image_is_refused_and_nothing_changes(local_backend, gui_images, kind):
    c = Controller(local_backend)
    c.open_image(gui_images["red"])
    c.ask("What colour is the square?")
    c.wait_idle()
    path = gui_images.get(kind, gui_images["red"].parent / "missing.png")
    with pytest.raises(ValueError, match=path.name):
        c.open_image(path)
    assert c.image_path == gui_images["red"] and len(c.history) == 1
    c.ask("Where is the circle?")  # and it keeps working
    c.wait_idle()
    assert [t.answer for t in c.history] == [ANSWER, ANSWER]
    c.close()


def test_missing_checkpoint_is_reported_and_the_app_recovers(answering_checkpoint, gui_images, tmp_path):
    c = Controller(PredictorBackend(ModelSource(checkpoint=str(tmp_path / "no-such-run")), SamplingSettings(max_new_tokens=24)))
    c.load_backend()
    events = c.wait_idle()
    assert [e.kind for e in events] == ["load_error"]
    assert "no such checkpoint directory" in events[0].text and not c.model_ready
    assert "Model not loaded" in c.status
    c.open_image(gui_images["red"])
    c.ask("What colour is the square?")  # asking retries the load, and fails the same way
    events = c.wait_idle()
    assert [e.kind for e in events] == ["error"] and "no such checkpoint" in events[0].text
    assert c.history[0].state == "error" and c.history[0].answer == "" and not c.busy

    # An empty directory is "not a checkpoint", also without a traceback.
    (tmp_path / "empty").mkdir()
    c.load_backend(PredictorBackend(ModelSource(checkpoint=str(tmp_path / "empty"))))
    events = c.wait_idle()
    assert events[0].kind == "load_error" and "not a checkpoint" in events[0].text

    c.load_backend(PredictorBackend(ModelSource(checkpoint=str(answering_checkpoint), device="cpu"),
                                 SamplingSettings(max_new_tokens=24)))
    c.wait_idle()
    assert c.model_ready
    c.ask("What colour is the square?")
    c.wait_idle()
    assert c.history[-1].answer == ANSWER
    c.close()


def test_stop_cancels_mid_answer(local_backend, gui_images):
    c = Controller(local_backend, token_delay=0.2)
    c.open_image(gui_images["red"])
    turn = c.ask("What colour is the square?")
    poll_until(c, lambda: turn.answer)
    assert turn.state == "streaming"
    t0 = time.monotonic()
    assert c.stop()
    assert c.status == "Stopping…"
    c.wait_idle(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert turn.state == "stopped" and c.status == "Stopped"
    assert turn.answer and ANSWER.startswith(turn.answer) and len(turn.answer) < len(ANSWER)
    assert not c.stop()  # nothing left to stop
    c.token_delay = 0.0
    c.ask("Where is the circle?")  # the next question runs normally
    c.wait_idle()
    assert c.history[-1].answer == ANSWER
    c.close()


def test_changing_the_image_mid_answer_drops_the_old_answer(local_backend, gui_images):
    c = Controller(local_backend, token_delay=0.2)
    c.open_image(gui_images["red"])
    turn = c.ask("What colour is the square?")
    poll_until(c, lambda: turn.answer)
    c.open_image(gui_images["blue"])
    assert c.history == [] and not c.busy and c.can_ask
    c.token_delay = 0.0
    c.ask("What is in the picture?")
    c.wait_idle()
    assert len(c.history) == 1 and c.history[0].answer == ANSWER and c.history[0].state == "done"
    assert turn.state == "streaming"  # the dropped turn never received another report
    c.close()


def test_server_backend_streams_sends_the_image_and_picks_the_model(answer_server, gui_images):
    server = answer_server()
    settings = SamplingSettings(max_new_tokens=32)
    c = Controller(ServerBackend(ModelSource(server=server.url + "/v1", timeout=60), settings))
    c.load_backend()
    c.wait_idle()
    assert c.model_ready and c.backend.remote.model == "tiny-vqa" and "tiny-vqa" in c.status
    c.open_image(gui_images["blue"])
    c.ask("What colour is the square?")
    events = c.wait_idle()
    assert c.history[0].answer == ANSWER and c.history[0].state == "done"
    assert len([e for e in events if e.kind == "piece"]) == len(ANSWER.split())
    body = server.requests[0]
    assert body["model"] == "tiny-vqa" and body["stream"] is True
    assert body["max_tokens"] == 32 and body["temperature"] == 0.0
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "What colour is the square?"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (200, 300) and sent.mode == "RGB"

    whole = ServerBackend(ModelSource(server=server.url, model="named", timeout=60), settings, stream=False)
    assert "".join(whole.ask(gui_images["red"], "What?")) == ANSWER
    assert server.requests[-1]["model"] == "named" and server.requests[-1]["stream"] is False
    c.close()


def test_server_errors_are_reported_and_the_app_keeps_working(answer_server, gui_images):
    c = Controller(ServerBackend(ModelSource(server=f"http://127.0.0.1:{free_port()}", model="m", timeout=5)))
    c.load_backend()
    events = c.wait_idle()
    assert events[0].kind == "load_error" and "cannot reach the server" in events[0].text
    c.open_image(gui_images["red"])
    c.ask("What colour is the square?")
    events = c.wait_idle()
    assert events[-1].kind == "error" and "cannot reach the server" in events[-1].text
    assert c.history[0].state == "error" and not c.busy

    failing = answer_server(fail_with=500)
    c.load_backend(ServerBackend(ModelSource(server=failing.url, timeout=60)))
    c.wait_idle()
    assert c.model_ready
    c.ask("What colour is the square?")
    events = c.wait_idle()
    assert events[-1].kind == "error" and "500" in events[-1].text and "model exploded" in events[-1].text

    for misbehave, message in (("stream_error", "error mid-answer: EngineCore"), ("cut", "mid-answer"),
                               ("no_choices", "held no answer")):
        broken = answer_server(misbehave=misbehave)  # a part of the answer may have been shown; then the error
        c.load_backend(ServerBackend(ModelSource(server=broken.url, timeout=60)))
        c.wait_idle()
        c.ask("What colour is the square?")
        events = c.wait_idle()
        assert events[-1].kind == "error" and message in events[-1].text, events[-1]
        assert c.history[-1].state == "error"

    working = answer_server()
    c.load_backend(ServerBackend(ModelSource(server=working.url, timeout=60)))
    c.wait_idle()
    c.ask("What colour is the square?")
    c.wait_idle()
    assert c.history[-1].answer == ANSWER
    with pytest.raises(BackendError, match="not a readable image"):
        list(ServerBackend(ModelSource(server=working.url, model="m", timeout=60)).ask(gui_images["text"], "What?"))
    c.close()


def test_server_answer_can_be_stopped(answer_server, gui_images):
    server = answer_server(delay=0.2)
    c = Controller(ServerBackend(ModelSource(server=server.url, model="m", timeout=60)))
    c.open_image(gui_images["red"])
    turn = c.ask("What colour is the square?")
    poll_until(c, lambda: turn.answer)
    t0 = time.monotonic()
    c.stop()
    c.wait_idle(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert turn.state == "stopped" and ANSWER.startswith(turn.answer) and len(turn.answer) < len(ANSWER)
    assert server.closed_early.wait(5)  # the connection was closed, the server stopped sending
    c.close()

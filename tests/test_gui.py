"""gui.py and ui/controller.py: the controller without a display, then the real app under Xvfb.

The checkpoint is real: the tiny model, trained for a few steps (LoRA + projector) to answer
every question with ``ANSWER``, saved with ``save_pretrained`` and loaded by the app through
``Predictor.from_checkpoint``. The window tests start Xvfb themselves (installing xvfb and
xdotool with apt-get when they are missing, never skipping), drive the app with xdotool, read its
state through the ``--state-file`` test hook and save a screenshot to ``test-artifacts/``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from inference.generation import SamplingSettings
from ui.controller import BackendError, Controller, LocalBackend, ServerBackend
from tests.conftest import ROOT, make_model
from tests.fake_openai import FakeOpenAI

ANSWER = "the big red square is left of the small blue circle"
QUESTIONS = ["What colour is the square?", "What is in the picture?", "Describe the image.", "Where is the circle?"]
ARTIFACTS = ROOT / "test-artifacts"


# --------------------------------------------------------------------------------------------
# Fixtures: a checkpoint that answers, images, a fake OpenAI-compatible server
# --------------------------------------------------------------------------------------------


def build_answering_checkpoint(tiny, tokenizer, out: Path) -> Path:
    """The tiny model taught (LoRA + projector, a few full-batch Adam steps) to answer ANSWER.

    A random tiny model mostly emits newlines, which would make "a non-empty answer" vacuous."""
    from qwen import PromptRenderer, question_messages

    lora = {"r": 8, "alpha": 16, "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    model = make_model(tiny, finetune="lora", lora=lora)
    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens)
    rows = [renderer.render(question_messages(q) + [{"role": "assistant", "content": ANSWER}]) for q in QUESTIONS]
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.input_ids)] = 1
    size = model.vision_tower.preprocessor.size
    pixels = torch.randn(len(rows), 3, size, size, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(20):  # greedy decoding gives ANSWER for every question after ~10 steps
        loss = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a small shared machine, multi-threaded torch mostly waits on its own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tiny, tokenizer, tmp_path_factory) -> Path:
    return build_answering_checkpoint(tiny, tokenizer, tmp_path_factory.mktemp("gui") / "ckpt")


@pytest.fixture(scope="module")
def local_backend(checkpoint) -> LocalBackend:
    backend = LocalBackend(checkpoint, SamplingSettings(max_new_tokens=24), device="cpu")
    backend.load()
    return backend


def write_image(path: Path, size=(320, 200), colour=(200, 40, 40)) -> Path:
    image = Image.new("RGB", size, (250, 250, 250))
    image.paste(Image.new("RGB", (size[0] // 3, size[1] // 2), colour), (20, 30))
    image.save(path)
    return path


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    (tmp_path / "notes.txt").write_text("this is not an image\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return {
        "red": write_image(tmp_path / "red.png"),
        "blue": write_image(tmp_path / "blue.jpg", (200, 300), (30, 60, 220)),
        "text": tmp_path / "notes.txt",
        "broken": tmp_path / "broken.png",
    }


def poll_until(controller: Controller, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    events = []
    while time.monotonic() < deadline:
        events += controller.poll()
        if predicate():
            return events
        time.sleep(0.005)
    raise AssertionError(f"timed out; status {controller.status!r}, history {controller.history}")


@pytest.fixture
def fake_server():
    servers = []

    def start(**kwargs) -> FakeOpenAI:
        servers.append(FakeOpenAI(ANSWER, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Controller (no display)
# --------------------------------------------------------------------------------------------


def test_answers_stream_into_history_and_a_new_image_starts_a_new_one(local_backend, images):
    c = Controller(local_backend)
    c.load_backend()
    c.wait_idle()
    assert c.model_ready and not c.busy and "checkpoint" in c.status
    with pytest.raises(ValueError, match="open an image"):
        c.ask("What colour is the square?")
    c.open_image(images["red"])
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

    c.open_image(images["blue"])
    assert c.history == [] and c.image_path == images["blue"] and c.can_ask
    c.ask("What is in the picture?")
    c.wait_idle()
    assert len(c.history) == 1 and c.history[0].answer == ANSWER
    c.close()


@pytest.mark.parametrize("kind", ["text", "broken", "missing"])
def test_a_file_that_is_not_an_image_is_refused_and_nothing_changes(local_backend, images, kind):
    c = Controller(local_backend)
    c.open_image(images["red"])
    c.ask("What colour is the square?")
    c.wait_idle()
    path = images.get(kind, images["red"].parent / "missing.png")
    with pytest.raises(ValueError, match=path.name):
        c.open_image(path)
    assert c.image_path == images["red"] and len(c.history) == 1
    c.ask("Where is the circle?")  # and it keeps working
    c.wait_idle()
    assert [t.answer for t in c.history] == [ANSWER, ANSWER]
    c.close()


def test_missing_checkpoint_is_reported_and_the_app_recovers(checkpoint, images, tmp_path):
    c = Controller(LocalBackend(tmp_path / "no-such-run", SamplingSettings(max_new_tokens=24)))
    c.load_backend()
    events = c.wait_idle()
    assert [e.kind for e in events] == ["load_error"]
    assert "no such checkpoint directory" in events[0].text and not c.model_ready
    assert "Model not loaded" in c.status
    c.open_image(images["red"])
    c.ask("What colour is the square?")  # asking retries the load, and fails the same way
    events = c.wait_idle()
    assert [e.kind for e in events] == ["error"] and "no such checkpoint" in events[0].text
    assert c.history[0].state == "error" and c.history[0].answer == "" and not c.busy

    # An empty directory is "not a checkpoint", also without a traceback.
    (tmp_path / "empty").mkdir()
    c.load_backend(LocalBackend(tmp_path / "empty"))
    events = c.wait_idle()
    assert events[0].kind == "load_error" and "not a checkpoint" in events[0].text

    c.load_backend(LocalBackend(checkpoint, SamplingSettings(max_new_tokens=24), device="cpu"))
    c.wait_idle()
    assert c.model_ready
    c.ask("What colour is the square?")
    c.wait_idle()
    assert c.history[-1].answer == ANSWER
    c.close()


def test_stop_cancels_mid_answer(local_backend, images):
    c = Controller(local_backend, token_delay=0.2)
    c.open_image(images["red"])
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


def test_changing_the_image_mid_answer_drops_the_old_answer(local_backend, images):
    c = Controller(local_backend, token_delay=0.2)
    c.open_image(images["red"])
    turn = c.ask("What colour is the square?")
    poll_until(c, lambda: turn.answer)
    c.open_image(images["blue"])
    assert c.history == [] and not c.busy and c.can_ask
    c.token_delay = 0.0
    c.ask("What is in the picture?")
    c.wait_idle()
    assert len(c.history) == 1 and c.history[0].answer == ANSWER and c.history[0].state == "done"
    assert turn.state == "streaming"  # the dropped turn never received another report
    c.close()


def test_server_backend_streams_sends_the_image_and_picks_the_model(fake_server, images):
    server = fake_server()
    settings = SamplingSettings(max_new_tokens=32)
    c = Controller(ServerBackend(server.url + "/v1", None, settings))
    c.load_backend()
    c.wait_idle()
    assert c.model_ready and c.backend.remote.model == "tiny-vqa" and "tiny-vqa" in c.status
    c.open_image(images["blue"])
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

    whole = ServerBackend(server.url, "named", settings, stream=False)
    assert "".join(whole.ask(images["red"], "What?")) == ANSWER
    assert server.requests[-1]["model"] == "named" and server.requests[-1]["stream"] is False
    c.close()


def test_server_errors_are_reported_and_the_app_keeps_working(fake_server, images):
    c = Controller(ServerBackend(f"http://127.0.0.1:{unused_port()}", "m", timeout=5))
    c.load_backend()
    events = c.wait_idle()
    assert events[0].kind == "load_error" and "cannot reach the server" in events[0].text
    c.open_image(images["red"])
    c.ask("What colour is the square?")
    events = c.wait_idle()
    assert events[-1].kind == "error" and "cannot reach the server" in events[-1].text
    assert c.history[0].state == "error" and not c.busy

    failing = fake_server(fail_with=500)
    c.load_backend(ServerBackend(failing.url, None))
    c.wait_idle()
    assert c.model_ready
    c.ask("What colour is the square?")
    events = c.wait_idle()
    assert events[-1].kind == "error" and "500" in events[-1].text and "model exploded" in events[-1].text

    working = fake_server()
    c.load_backend(ServerBackend(working.url, None))
    c.wait_idle()
    c.ask("What colour is the square?")
    c.wait_idle()
    assert c.history[-1].answer == ANSWER
    with pytest.raises(BackendError, match="not a readable image"):
        list(ServerBackend(working.url, "m").ask(images["text"], "What?"))
    c.close()


def test_server_answer_can_be_stopped(fake_server, images):
    server = fake_server(delay=0.2)
    c = Controller(ServerBackend(server.url, "m"))
    c.open_image(images["red"])
    turn = c.ask("What colour is the square?")
    poll_until(c, lambda: turn.answer)
    t0 = time.monotonic()
    c.stop()
    c.wait_idle(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert turn.state == "stopped" and ANSWER.startswith(turn.answer) and len(turn.answer) < len(ANSWER)
    assert server.closed_early.wait(5)  # the connection was closed, the server stopped sending
    c.close()


# --------------------------------------------------------------------------------------------
# The real window under Xvfb
# --------------------------------------------------------------------------------------------


def ensure_x_tools() -> None:
    """Xvfb and xdotool (.ci/run installs them); install them here when missing, never skip."""
    if shutil.which("Xvfb") and shutil.which("xdotool"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for cmd in (sudo + ["apt-get", "update", "-qq"], sudo + ["apt-get", "install", "-y", "-qq", "xvfb", "xdotool"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    assert shutil.which("Xvfb") and shutil.which("xdotool"), "apt-get did not provide Xvfb and xdotool"


@pytest.fixture(scope="module")
def display():
    """A private Xvfb server; ``-displayfd`` lets it pick a free display number itself."""
    ensure_x_tools()
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number:
        xvfb.kill()
        pytest.fail(f"Xvfb did not start: {xvfb.stderr.read().decode(errors='replace')}")
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(10)


class RunningApp:
    """``python gui.py ...`` on the Xvfb display, observed through its --state-file."""

    def __init__(self, display: str, tmp_path: Path, *args: str) -> None:
        self.display = display
        self.env = dict(os.environ, DISPLAY=display, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                        OMP_NUM_THREADS="1")
        self.state_file = tmp_path / "state.json"
        self.log = tmp_path / "gui.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "gui.py"), *args, "--state-file", str(self.state_file)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.window = None

    def state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def wait(self, predicate, timeout=60.0, what="condition") -> dict:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the app exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}"
            state = self.state()
            if state is not None and predicate(state):
                return state
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; state:\n{json.dumps(state, indent=1)}\n"
                             f"log:\n{self.log.read_text()[-3000:]}")

    def xdotool(self, *args: str) -> str:
        done = subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"xdotool {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def find_window(self, title: str) -> str:
        ids = self.xdotool("search", "--sync", "--onlyvisible", "--name", f"^{title}$").split()
        return ids[-1]

    def focus(self, title="Visual question answering") -> str:
        window = self.find_window(title)
        self.xdotool("windowfocus", "--sync", window)
        return window

    def geometry(self, window: str) -> tuple[int, int, int, int]:
        """x, y, width, height of an X window, as xdotool getwindowgeometry reports them."""
        shell = self.xdotool("getwindowgeometry", "--shell", window)
        g = dict(line.split("=", 1) for line in shell.splitlines())
        return tuple(int(g[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))

    def screenshot(self, window: str, name: str) -> Image.Image:
        """Grab the window from the X server into test-artifacts/NAME; its size is the window's."""
        from PIL import ImageGrab

        x, y, width, height = self.geometry(window)
        shot = ImageGrab.grab(bbox=(x, y, x + width, y + height), xdisplay=self.display)
        ARTIFACTS.mkdir(exist_ok=True)
        shot.save(ARTIFACTS / name)
        assert shot.size == (width, height)
        assert len(shot.getcolors(1 << 20) or range(1 << 20)) > 50  # drawn, not a blank frame
        return shot

    def type(self, text: str) -> None:
        self.xdotool("type", "--delay", "15", text)

    def key(self, *keys: str) -> None:
        self.xdotool("key", "--delay", "30", *keys)

    def dismiss_dialog(self, title: str) -> None:
        self.focus(title)
        self.key("Return")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start_app(display, tmp_path):
    apps = []

    def start(*args: str) -> RunningApp:
        apps.append(RunningApp(display, tmp_path, *args))
        return apps[-1]

    yield start
    for app in apps:
        app.close()


def test_window_answers_survives_a_bad_file_and_stays_responsive(start_app, checkpoint, images):
    app = start_app("--checkpoint", str(checkpoint), str(images["red"]), "--test-token-delay", "0.25",
                    "--set", "generation.max_new_tokens=24")
    state = app.wait(lambda s: s["model_ready"] and s["image"] and s["preview"], 120, "model and image")
    assert state["image"] == str(images["red"]) and state["ask_enabled"] and not state["stop_enabled"]
    w, h = state["preview"]
    assert abs(w / h - 320 / 200) < 0.02  # the preview keeps the aspect ratio
    window = app.focus()

    # Ask with the keyboard; while the answer streams in (slowed down by the test hook), resize.
    app.type("What colour is the square?")
    app.key("Return")
    state = app.wait(lambda s: s["history"] and s["history"][0]["answer"], 60, "the first piece")
    assert state["busy"] and not state["ask_enabled"] and state["stop_enabled"]
    assert state["status"].startswith("Generating")
    # The window's Tk root excludes the menu bar, which sits at the top of the X window.
    menu_bar = state["window"]["y"] - app.geometry(window)[1]
    app.screenshot(window, "gui-generating.png")  # at the default size, busy
    t0 = time.time()
    app.xdotool("windowsize", window, "1160", "760")
    state = app.wait(lambda s: (s["window"]["width"], s["window"]["height"] + menu_bar) == (1160, 760), 5, "resize")
    handled = time.time() - t0
    assert handled < 1.0, f"the resize took {handled:.2f} s to be handled while generating"
    assert state["history"][0]["state"] == "streaming", "the answer finished before the resize: not a test"
    state = app.wait(lambda s: s["preview"] and s["preview"][0] > w, 5, "the preview to grow")
    assert abs(state["preview"][0] / state["preview"][1] - 320 / 200) < 0.02

    state = app.wait(lambda s: not s["busy"], 60, "the answer")
    assert state["history"][0] == {"question": "What colour is the square?", "answer": ANSWER,
                                   "state": "done", "error": None}
    assert "Q: What colour is the square?\nA: " + ANSWER in state["history_text"]
    assert state["status"].startswith("Answered in") and state["ask_enabled"] and not state["stop_enabled"]

    # Screenshot of the window (the test artifact), as large as the window's geometry.
    assert app.screenshot(window, "gui-answer.png").size == (1160, 760)

    # Ask again and click Stop mid-answer: handled within a second, the partial answer is kept.
    app.focus()
    app.type("Where is the circle?")
    app.key("Return")
    state = app.wait(lambda s: len(s["history"]) == 2 and s["history"][1]["answer"], 60, "the second answer")
    t0 = time.time()
    app.xdotool("mousemove", "--sync", str(state["stop_button"]["x"]), str(state["stop_button"]["y"]), "click", "1")
    state = app.wait(lambda s: s["history"][1]["state"] == "stopped", 5, "stop")
    assert time.time() - t0 < 1.0
    partial = state["history"][1]["answer"]
    assert partial and ANSWER.startswith(partial) and len(partial) < len(ANSWER)
    assert not state["busy"] and state["ask_enabled"] and state["status"] == "Stopped"
    assert state["history_text"].endswith("A: " + partial + "  [stopped]\n")

    # Ctrl+O, type a non-image file's path into Tk's file dialog: an error dialog, nothing lost.
    app.focus()
    app.key("ctrl+o")
    app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "open", 10, "the file dialog")
    app.focus("Open image")
    app.type(str(images["text"]))
    app.key("Return")
    state = app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "error", 10, "the error dialog")
    assert state["dialog"]["title"] == "Cannot open image" and "notes.txt" in state["dialog"]["message"]
    assert "not a readable image" in state["dialog"]["detail"]
    app.screenshot(app.find_window("Cannot open image"), "gui-error-dialog.png")
    app.dismiss_dialog("Cannot open image")
    state = app.wait(lambda s: s["dialog"] is None, 10, "the dialog to close")
    assert state["image"] == str(images["red"]) and len(state["history"]) == 2

    # ...and the app still answers.
    app.focus()
    app.type("Describe the image.")
    app.key("Return")
    state = app.wait(lambda s: len(s["history"]) == 3 and s["history"][2]["state"] == "done", 60, "the third answer")
    assert state["history"][2]["answer"] == ANSWER

    # Ctrl+O with a real image starts a new history.
    app.focus()
    app.key("ctrl+o")
    app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "open", 10, "the file dialog")
    app.focus("Open image")
    app.type(str(images["blue"]))
    app.key("Return")
    state = app.wait(lambda s: s["image"] == str(images["blue"]), 10, "the new image")
    assert state["history"] == [] and abs(state["preview"][0] / state["preview"][1] - 200 / 300) < 0.02

    app.focus()
    app.key("ctrl+q")
    assert app.proc.wait(20) == 0
    assert "Traceback" not in app.log.read_text()


def test_window_with_a_missing_checkpoint_shows_errors_and_keeps_running(start_app, images, tmp_path):
    app = start_app("--checkpoint", str(tmp_path / "no-such-run"), str(images["red"]))
    state = app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "error", 60, "the load error")
    assert state["dialog"]["title"] == "Model not available"
    assert "no such checkpoint directory" in state["dialog"]["detail"]
    app.dismiss_dialog("Model not available")
    app.wait(lambda s: s["dialog"] is None and s["image"], 10, "the dialog to close")
    app.focus()
    app.type("What colour is the square?")
    app.key("Return")
    state = app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "error", 30, "the answer error")
    assert state["dialog"]["title"] == "Cannot answer" and state["history"][0]["state"] == "error"
    app.dismiss_dialog("Cannot answer")
    state = app.wait(lambda s: s["dialog"] is None, 10, "the dialog to close")
    assert state["ask_enabled"] and app.proc.poll() is None
    app.focus()
    app.key("ctrl+q")
    assert app.proc.wait(20) == 0


def test_window_with_a_server_answers_and_reports_when_it_goes_away(start_app, fake_server, images):
    server = fake_server()
    app = start_app("--server", server.url, str(images["blue"]))
    state = app.wait(lambda s: s["model_ready"] and s["preview"], 60, "the server check and the image")
    assert "tiny-vqa" in state["status"]
    app.focus()
    app.type("What colour is the square?")
    app.key("Return")
    state = app.wait(lambda s: s["history"] and s["history"][0]["state"] == "done", 30, "the answer")
    assert state["history"][0]["answer"] == ANSWER
    assert server.requests[0]["messages"][0]["content"][1]["text"] == "What colour is the square?"

    server.close()  # the server goes away: an error dialog, and the app keeps running
    app.focus()
    app.type("Where is the circle?")
    app.key("Return")
    state = app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "error", 30, "the error dialog")
    assert state["dialog"]["title"] == "Cannot answer" and "cannot reach the server" in state["dialog"]["detail"]
    app.dismiss_dialog("Cannot answer")
    state = app.wait(lambda s: s["dialog"] is None, 10, "the dialog to close")
    assert [t["state"] for t in state["history"]] == ["done", "error"] and state["ask_enabled"]
    app.focus()
    app.key("ctrl+q")
    assert app.proc.wait(20) == 0


def test_without_a_display_it_exits_with_one_clear_line():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, str(ROOT / "gui.py"), "--checkpoint", "x"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot open a window") and "Traceback" not in done.stderr

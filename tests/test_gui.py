"""gui.py: the real window under Xvfb, driven with xdotool.

The tests start Xvfb themselves (installing xvfb and xdotool with apt-get when they are missing,
never skipping), drive the app with xdotool, read its state through the ``--state-file`` test hook
and save screenshots to ``test-artifacts/``. The checkpoint and server answer ANSWER
(tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ANSWER, ROOT

ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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

    def ask(self, question: str) -> None:
        """Type a question into the main window and press Enter."""
        self.focus()
        self.type(question)
        self.key("Return")

    def open_with_dialog(self, path: Path) -> None:
        """Ctrl+O, then type ``path`` into Tk's file dialog and press Enter."""
        self.focus()
        self.key("ctrl+o")
        self.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "open", 10, "the file dialog")
        self.focus("Open image")
        self.type(str(path))
        self.key("Return")

    def dismiss_dialog(self, title: str) -> dict:
        """Press Enter on the dialog called ``title``; the state once it has closed."""
        self.focus(title)
        self.key("Return")
        return self.wait(lambda s: s["dialog"] is None, 10, "the dialog to close")

    def quit(self) -> None:
        """Ctrl+Q: the app exits cleanly."""
        self.focus()
        self.key("ctrl+q")
        assert self.proc.wait(20) == 0

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


def test_window_answers_survives_a_bad_file_and_stays_responsive(start_app, answering_checkpoint, gui_images):
    app = start_app("--checkpoint", str(answering_checkpoint), str(gui_images["red"]), "--test-token-delay", "0.25",
                    "--set", "generation.max_new_tokens=24")
    state = app.wait(lambda s: s["model_ready"] and s["image"] and s["preview"], 120, "model and image")
    assert state["image"] == str(gui_images["red"]) and state["ask_enabled"] and not state["stop_enabled"]
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
    app.ask("Where is the circle?")
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
    app.open_with_dialog(gui_images["text"])
    state = app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "error", 10, "the error dialog")
    assert state["dialog"]["title"] == "Cannot open image" and "notes.txt" in state["dialog"]["message"]
    assert "not a readable image" in state["dialog"]["detail"]
    app.screenshot(app.find_window("Cannot open image"), "gui-error-dialog.png")
    state = app.dismiss_dialog("Cannot open image")
    assert state["image"] == str(gui_images["red"]) and len(state["history"]) == 2

    # ...and the app still answers.
    app.ask("Describe the image.")
    state = app.wait(lambda s: len(s["history"]) == 3 and s["history"][2]["state"] == "done", 60, "the third answer")
    assert state["history"][2]["answer"] == ANSWER

    # Ctrl+O with a real image starts a new history.
    app.open_with_dialog(gui_images["blue"])
    state = app.wait(lambda s: s["image"] == str(gui_images["blue"]), 10, "the new image")
    assert state["history"] == [] and abs(state["preview"][0] / state["preview"][1] - 200 / 300) < 0.02

    app.quit()
    assert "Traceback" not in app.log.read_text()


def test_window_with_a_missing_checkpoint_shows_errors_and_keeps_running(start_app, gui_images, tmp_path):
    app = start_app("--checkpoint", str(tmp_path / "no-such-run"), str(gui_images["red"]))
    state = app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "error", 60, "the load error")
    assert state["dialog"]["title"] == "Model not available"
    assert "no such checkpoint directory" in state["dialog"]["detail"]
    app.dismiss_dialog("Model not available")
    app.wait(lambda s: s["dialog"] is None and s["image"], 10, "the dialog to close")
    app.ask("What colour is the square?")
    state = app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "error", 30, "the answer error")
    assert state["dialog"]["title"] == "Cannot answer" and state["history"][0]["state"] == "error"
    state = app.dismiss_dialog("Cannot answer")
    assert state["ask_enabled"] and app.proc.poll() is None
    app.quit()


def test_window_with_a_server_answers_and_reports_when_it_goes_away(start_app, answer_server, gui_images):
    server = answer_server()
    app = start_app("--server", server.url, str(gui_images["blue"]))
    state = app.wait(lambda s: s["model_ready"] and s["preview"], 60, "the server check and the image")
    assert "tiny-vqa" in state["status"]
    app.ask("What colour is the square?")
    state = app.wait(lambda s: s["history"] and s["history"][0]["state"] == "done", 30, "the answer")
    assert state["history"][0]["answer"] == ANSWER
    assert server.requests[0]["messages"][0]["content"][1]["text"] == "What colour is the square?"

    server.close()  # the server goes away: an error dialog, and the app keeps running
    app.ask("Where is the circle?")
    state = app.wait(lambda s: s["dialog"] and s["dialog"]["kind"] == "error", 30, "the error dialog")
    assert state["dialog"]["title"] == "Cannot answer" and "cannot reach the server" in state["dialog"]["detail"]
    state = app.dismiss_dialog("Cannot answer")
    assert [t["state"] for t in state["history"]] == ["done", "error"] and state["ask_enabled"]
    app.quit()


def test_without_a_display_it_exits_with_one_clear_line():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, str(ROOT / "gui.py"), "--checkpoint", "x"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot open a window") and "Traceback" not in done.stderr

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


# -- review mode -------------------------------------------------------------------------------


def review_answers(directory: Path, count: int = 20) -> Path:
    """``count`` answers about distinct images; item i has confidence -(i+1)/10, so the queue
    (least confident first) is i = count-1 ... 0, and items 5.. are flagged."""
    from tests.conftest import write_image

    lines = []
    for i in range(count):
        image = write_image(directory / f"photo{i:02d}.png", (160, 120), (10 * i, 120, 250 - 10 * i))
        confidence = -(i + 1) / 10
        entry = {"image": str(image), "question": f"What is in photo {i}?", "answer": f"answer {i}",
                 "confidence": confidence, "review": confidence < -0.5}
        if entry["review"]:
            entry["flags"] = ["low_confidence"]
        lines.append(json.dumps(entry))
    path = directory / "answers.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_review_window_by_keyboard_survives_kill_9_and_feeds_training(start_app, tmp_path):
    from commands import process_image
    answers = review_answers(tmp_path)
    log = tmp_path / "answers.review.jsonl"
    title = "Review answers.jsonl"
    app = start_app("--review", str(answers), "--reviewer", "tester")
    state = app.wait(lambda s: s["current"] and s["image_size"] and s["image_size"][0] > 300, 60, "the first item")
    assert abs(state["image_size"][0] / state["image_size"][1] - 160 / 120) < 0.02  # fitted, aspect kept
    assert state["current"]["answer"] == "answer 19" and state["progress"] == "0 / 20 reviewed · 15 flagged left"
    window = app.focus(title)
    app.screenshot(window, "review-item.png")

    def press(*keys: str, decided: int) -> dict:
        app.key(*keys)
        return app.wait(lambda s: sum(v for k, v in s["counts"].items() if k != "undecided") == decided
                        and not s["editing"], 10, f"{decided} decisions after {keys}")

    press("Return", decided=1)                                       # 19: accept
    app.key("e")                                                     # 18: edit, typing replaces
    app.wait(lambda s: s["editing"] and s["edit_text"] == "answer 18", 10, "the edit box")
    app.type("红色的公交车 über")
    app.wait(lambda s: s["edit_text"] == "红色的公交车 über", 10, "the typed text")
    app.screenshot(window, "review-editing.png")
    press("Return", decided=2)
    app.type("Zebra")                                                # 17: typing starts an edit
    app.wait(lambda s: s["editing"] and s["edit_text"] == "Zebra", 10, "the typed edit")
    press("Return", decided=3)
    press("Delete", decided=4)                                       # 16: reject
    press("s", decided=5)                                            # 15: skip
    press("Return", decided=6)                                       # 14: accept...
    state = press("u", decided=5)                                    # ...undone
    assert state["current"]["answer"] == "answer 14" and state["message"] == "Undid: accept"
    button = state["buttons"]["reject"]                              # 14: reject with the mouse
    app.xdotool("mousemove", "--sync", str(button["x"]), str(button["y"]), "click", "1")
    state = app.wait(lambda s: s["counts"]["reject"] == 2, 10, "the Reject button")
    app.focus(title)
    app.key("e")                                                     # 13: an edit abandoned with Esc
    app.wait(lambda s: s["editing"], 10, "the edit box")
    app.key("Escape")
    state = app.wait(lambda s: not s["editing"], 10, "the edit to close")
    assert state["current"]["answer"] == "answer 13" and state["current"]["decision"] is None

    app.proc.kill()  # SIGKILL: no chance to flush or clean up
    app.proc.wait(10)
    decided = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()][1:]
    assert [(d["decision"], d.get("model_answer"), d.get("final_answer")) for d in decided] == [
        ("accept", "answer 19", "answer 19"), ("edit", "answer 18", "红色的公交车 über"),
        ("edit", "answer 17", "Zebra"), ("reject", "answer 16", None), ("skip", "answer 15", None),
        ("accept", "answer 14", "answer 14"), ("undo", None, None), ("reject", "answer 14", None)]

    # Reopened: resumes at the first undecided item (13); accept the rest, one of them with Enter each.
    app = start_app("--review", str(answers), "--reviewer", "tester")
    state = app.wait(lambda s: s["current"] is not None, 60, "the reopened review")
    assert state["current"]["answer"] == "answer 13" and state["progress"] == "6 / 20 reviewed · 9 flagged left"
    app.focus(title)
    for n in range(7, 21):
        state = press("Return", decided=n)
    assert state["message"] == "All 20 items reviewed" and state["counts"] == \
        {"accept": 15, "edit": 2, "reject": 2, "skip": 1, "undecided": 0}
    app.screenshot(app.find_window(title), "review-done.png")
    app.focus(title)
    app.key("ctrl+q")
    assert app.proc.wait(20) == 0 and "Traceback" not in app.log.read_text()

    # Back into training: 17 records (15 accepted + 2 corrected) and 2 preference pairs.
    config = tmp_path / "merge.yaml"
    config.write_text(f"data:\n  sources:\n    - type: reviewed\n      annotations: {answers}\n"
                      f"  output_dir: {tmp_path / 'merged'}\n")
    assert process_image.main(["--config", str(config)]) == 0
    records = json.loads((tmp_path / "merged" / "qa.json").read_text(encoding="utf-8"))
    finals = {r["messages"][0]["content"].split("photo ")[1].rstrip("?"): r["messages"][1]["content"] for r in records}
    expected = {str(i): f"answer {i}" for i in range(20) if i not in (14, 15, 16, 17, 18)}
    expected |= {"18": "红色的公交车 über", "17": "Zebra"}
    assert finals == expected
    pairs = [json.loads(line) for line in (tmp_path / "merged" / "preferences.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(p["messages"][1]["content"], p["rejected_response"]) for p in pairs] == \
        [("Zebra", "answer 17"), ("红色的公交车 über", "answer 18")]  # file order
    assert all(p["messages"][0]["content"].startswith("<image>\n") for p in pairs)


def test_review_refuses_a_directory_where_the_log_cannot_be_written(tmp_path):
    from tests.test_review import read_only

    folder = tmp_path / "shared"
    folder.mkdir()
    answers = review_answers(folder, 3)
    with read_only(folder):
        done = subprocess.run([sys.executable, str(ROOT / "gui.py"), "--review", str(answers)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, env=dict(os.environ, DISPLAY=":none"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {folder / 'answers.review.jsonl'}: cannot write the review log here")


@pytest.mark.parametrize("args, message", [
    (["--review", "missing.jsonl"], "error: missing.jsonl: no such answers file"),
    (["--review", "a.jsonl", "--checkpoint", "run"], "error: --review needs no model"),
    (["--reviewer", "ana", "--checkpoint", "run"], "error: --reviewer and --flagged-only are for --review"),
    ([], "error: give --checkpoint DIR, --gguf DIR or --server URL (or --review ANSWERS.jsonl)"),
])
def test_review_arguments_are_checked_before_a_window_opens(args, message):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, str(ROOT / "gui.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(message) and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

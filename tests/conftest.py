"""Shared fixtures: the offline tiny checkpoints (built once, deterministically) and models."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

# Nothing here may reach the model hub: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would
# every script it starts: the Ctrl-C tests would then wait for an interrupt that never arrives.
# A Python-level handler is reset to the default on exec, so children get their KeyboardInterrupt back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Under pytest-xdist (`make test` runs two workers on this 2-core machine) each worker and the
# scripts it starts compute on one thread: two workers with two threads each would oversubscribe
# the cores, and OpenMP's spin-waiting then slows small kernels down many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parent.parent
# The environment scripts run in as subprocesses: offline, quiet.
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def pytest_configure(config):
    """Build the tiny checkpoints once, in the controlling process, before any xdist worker starts:
    two workers building the same directory at once would race (a no-op when they are built)."""
    if not hasattr(config, "workerinput"):
        from tools.build_tiny_checkpoints import build_all

        build_all()


@pytest.fixture(scope="session")
def tiny() -> dict[str, Path]:
    """Paths of the tiny checkpoints (tokenizer, tiny-siglip, tiny-qwen2, tiny-qwen3, tiny-timm-vit)."""
    from tools.build_tiny_checkpoints import build_all

    return build_all()


@pytest.fixture(scope="session")
def tokenizer(tiny):
    from qwen import load_tokenizer

    return load_tokenizer(str(tiny["tiny-qwen2"]))


def base_model(tiny, vision="tiny-siglip", language="tiny-qwen2", train_vision_tower=False, **settings):
    """A fresh VQAModel wired from the tiny bases, in float32 (``settings``: ``config.ModelSettings``)."""
    from config import ModelSettings
    from model import VQAModel

    settings = ModelSettings(vision_model=str(tiny[vision]), language_model=str(tiny[language]),
                             **{"dtype": "float32", **settings})
    return VQAModel.from_settings(settings, train_vision_tower=train_vision_tower)


def make_model(tiny, language="tiny-qwen2", select="drop_first", lora=None, finetune=None, train_embeddings=True, **kwargs):
    import torch

    torch.manual_seed(0)
    model = base_model(tiny, language=language, vision_feature_select=select, **kwargs)
    if finetune:
        model.configure_training(finetune, lora, train_embeddings=train_embeddings)
    return model


LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def llava_from(model):
    """An HF Llava holding our weights, mapped by hand from the module names: the independent
    reference our logits and generation are checked against (exporters/llava.py is not used)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vision_cfg = model.vision_tower.model.config.to_dict()
    vision_cfg["vision_use_head"] = False
    cfg = LlavaConfig(
        vision_config=vision_cfg,
        text_config=model.text_config.to_dict(),
        image_token_index=model.config.image_token_id,
        image_seq_length=model.config.num_image_tokens,
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy="default" if model.config.vision_feature_select == "drop_first" else "full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration(cfg).eval()
    state = {}
    for k, v in model.vision_tower.model.state_dict().items():
        state[f"model.vision_tower.{k}"] = v
    for k, v in model.multi_modal_projector.state_dict().items():
        state[f"model.multi_modal_projector.{k}"] = v
    for k, v in model.decoder.state_dict().items():
        state[f"model.language_model.{k}"] = v
    state["lm_head.weight"] = model.lm_head.weight
    missing, unexpected = llava.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert not [m for m in missing if not m.startswith("model.vision_tower.post_layernorm")], missing
    return llava


def question_batch(model, tokenizer, questions, seed=0):
    """Left-padded prompts for ``questions`` (empty system prompt) and random pixels."""
    import torch

    from qwen import PromptRenderer, question_messages

    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens)
    rows = [renderer.render(question_messages(q, ""), add_generation_prompt=True).input_ids for q in questions]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    g = torch.Generator().manual_seed(seed)
    size = model.vision_tower.preprocessor.size
    pixels = torch.randn(len(rows), 3, size, size, generator=g)
    return ids, mask, pixels


def random_rgb(h=45, w=61, seed=0):
    """A reproducible random RGB image as a uint8 array."""
    import numpy as np

    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


# -- raw data sources (tests/raw_samples.py) --------------------------------------------------


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """A COCO-like image folder holding every image the LLaVA samples use (mix665k layout too)."""
    from tests.raw_samples import COMPLEX_77K, CONVERSATION_58K, DETAIL_23K, MIX_665K, touch

    root = tmp_path / "coco"
    touch(root, *(r["image"] for r in COMPLEX_77K + DETAIL_23K + CONVERSATION_58K + MIX_665K))
    return root


@pytest.fixture
def ai_source(tmp_path: Path) -> dict:
    """The AI Challenger reference records with their (empty) image files."""
    from tests.raw_samples import AI_CHALLENGER, touch, write_json

    touch(tmp_path / "ai_images", *(r["image_id"] for r in AI_CHALLENGER))
    path = write_json(tmp_path / "raw" / "caption_train_annotations.json", AI_CHALLENGER)
    return {"type": "ai_challenger", "annotations": path, "image_dir": str(tmp_path / "ai_images")}


# -- tiny checkpoints that really answer ------------------------------------------------------


def teach(model, tokenizer, examples: list[tuple[str, str]], pixels, steps: int, lr: float = 1e-2):
    """Full-batch Adam steps on (question, answer) pairs, one per row of ``pixels``: a random tiny
    model mostly emits newlines, which would make "the answer is right" vacuous. In place; eval mode
    after. Returns the losses, step by step."""
    import torch

    from qwen import PromptRenderer, question_messages

    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens)
    rows = [renderer.render(question_messages(q) + [{"role": "assistant", "content": a}]) for q, a in examples]
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.input_ids)] = 1
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def save_checkpoint(model, tokenizer, directory: Path) -> Path:
    """``save_pretrained`` + the tokenizer, renamed into place (a cached checkpoint is never half)."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(directory)
    return directory


COLOUR_QUESTION = "What colour is it?"


@pytest.fixture(scope="session")
def trained(tiny, tokenizer, tmp_path_factory):
    """A checkpoint that answers the colour of a solid image ("red" / "blue"; full fine-tune: with
    LoRA alone the tiny LM's logits stay nearly uniform), and a folder of test images."""
    from types import SimpleNamespace

    import torch
    from PIL import Image

    root = tmp_path_factory.getbasetemp() / "vqa-trained"
    ckpt, images = root / "checkpoint-25", root / "images"
    images.mkdir(parents=True)
    (images / "sub").mkdir()
    Image.new("RGB", (40, 30), (220, 20, 20)).save(images / "red.png")
    Image.new("RGB", (30, 40), (20, 20, 220)).save(images / "blue.png")
    Image.new("RGB", (32, 32), (200, 40, 30)).save(images / "sub" / "red2.jpg", quality=95)
    (images / "broken.png").write_bytes(b"this is not a png")
    (images / "notes.txt").write_text("not an image, ignored by extension\n")
    model = make_model(tiny, finetune="full")
    pixels = torch.stack([model.preprocessor(images / f"{c}.png") for c in ("red", "blue")])
    teach(model, tokenizer, [(COLOUR_QUESTION, "red"), (COLOUR_QUESTION, "blue")], pixels, steps=25)
    save_checkpoint(model, tokenizer, ckpt)
    return SimpleNamespace(root=root, checkpoint=ckpt, images=images, red=images / "red.png",
                           blue=images / "blue.png", red2=images / "sub" / "red2.jpg", broken=images / "broken.png")


def free_port() -> int:
    """A loopback port nothing listens on (closed again at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the GUI: a checkpoint and a server that answer ANSWER, images to open ----------------------

ANSWER = "the big red square is left of the small blue circle"
ANSWER_QUESTIONS = ["What colour is the square?", "What is in the picture?", "Describe the image.", "Where is the circle?"]


@pytest.fixture(scope="module")
def one_torch_thread():
    import torch

    """On a small shared machine, multi-threaded torch mostly waits on its own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def answering_checkpoint(tiny, tokenizer, tmp_path_factory) -> Path:
    """The tiny model taught (LoRA + projector) to answer every question with ANSWER (the GUI tests)."""
    import torch

    lora = {"r": 8, "alpha": 16, "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    model = make_model(tiny, finetune="lora", lora=lora)
    size = model.preprocessor.size
    pixels = torch.randn(len(ANSWER_QUESTIONS), 3, size, size, generator=torch.Generator().manual_seed(0))
    teach(model, tokenizer, [(q, ANSWER) for q in ANSWER_QUESTIONS], pixels, steps=20)  # ANSWER after ~10 steps
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("gui") / "ckpt")


def write_image(path: Path, size=(320, 200), colour=(200, 40, 40)) -> Path:
    from PIL import Image

    image = Image.new("RGB", size, (250, 250, 250))
    image.paste(Image.new("RGB", (size[0] // 3, size[1] // 2), colour), (20, 30))
    image.save(path)
    return path


@pytest.fixture
def gui_images(tmp_path) -> dict[str, Path]:
    (tmp_path / "notes.txt").write_text("this is not an image\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return {
        "red": write_image(tmp_path / "red.png"),
        "blue": write_image(tmp_path / "blue.jpg", (200, 300), (30, 60, 220)),
        "text": tmp_path / "notes.txt",
        "broken": tmp_path / "broken.png",
    }


@pytest.fixture
def answer_server():
    servers = []

    def start(**kwargs):
        from tests.fake_openai import FakeOpenAI

        servers.append(FakeOpenAI(ANSWER, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@contextlib.contextmanager
def small_disk(directory: Path, size: str = "512k"):
    """A real file system of ``size`` mounted at ``directory`` (tmpfs; mounting needs root, which
    the CI machines and these sandboxes are): writing more than that fails with ENOSPC, as a full
    disk does."""
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    assert os.geteuid() == 0, "mounting a small tmpfs needs root (as .ci/run runs)"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)

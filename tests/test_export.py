"""export.py: the LLaVA export computes what our model computes, and serves over the OpenAI API.

Three checkpoints are exported (fp32): a LoRA fine-tune (Qwen2, ``drop_first``, no system prompt,
so Qwen2.5's template inserts its default one), a full fine-tune (Qwen2, a custom non-ASCII
system prompt, written as several shards) and a projector-only one (Qwen3, ``full`` features).
The references are our own ``VQAModel`` and ``Predictor`` loaded from the same checkpoints.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from commands import export
from exporters import common, llava
from inference.generation import SamplingSettings
from qwen.chat_template import chat_template, default_system_prompt
from tests.conftest import LORA, ROOT, base_model, free_port, make_model

QUESTION = "What colour is the square?"
SYSTEM_PROMPT = "你是视觉助手。\nAnswer briefly."
MAX_NEW_TOKENS = 12
VARIANTS = {
    "lora": dict(language="tiny-qwen2", select="drop_first", finetune="lora", lora=LORA),
    "full": dict(language="tiny-qwen2", select="drop_first", finetune="full", system_prompt=SYSTEM_PROMPT),
    # image_aspect pad: the export's processor is LLaVA's own, padding to a square (picture() is not)
    "projector": dict(language="tiny-qwen3", select="full", finetune="projector", image_aspect="pad"),
    # peft's other adapters: merged by the same code, each checked against stock Llava below
    "dora": dict(language="tiny-qwen2", select="drop_first", finetune="lora", lora=dict(LORA, method="dora")),
    "rslora": dict(language="tiny-qwen2", select="drop_first", finetune="lora", lora=dict(LORA, method="rslora")),
    "pissa": dict(language="tiny-qwen2", select="drop_first", finetune="lora", lora=dict(LORA, init="pissa")),
}


def picture() -> Image.Image:
    """A red square on white, not the tower's size (so the resize is exercised)."""
    image = Image.new("RGB", (61, 45), "white")
    ImageDraw.Draw(image).rectangle([10, 8, 40, 30], fill=(220, 30, 30))
    return image


def fingerprint(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def save_checkpoint(tiny, tokenizer, directory: Path, language, select, finetune, lora=None, **kwargs) -> Path:
    model = make_model(tiny, language=language, select=select, finetune=finetune, lora=lora, **kwargs)
    torch.manual_seed(7)
    with torch.no_grad():  # non-zero LoRA B, a projector that matters, a changed LM
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.05))
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tiny, tokenizer, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: save_checkpoint(tiny, tokenizer, root / name, **spec) for name, spec in VARIANTS.items()}


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, ckpt in checkpoints.items():
        before = fingerprint(ckpt)
        old = llava.MAX_SHARD_SIZE
        llava.MAX_SHARD_SIZE = "10MB" if name == "full" else old  # exercise the sharded layout once
        try:
            assert export.main(["--checkpoint", str(ckpt), "--output", str(root / name), "--dtype", "float32"]) == 0
        finally:
            llava.MAX_SHARD_SIZE = old
        assert fingerprint(ckpt) == before, "the export modified the checkpoint"
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def predictors(checkpoints):
    """Our ``Predictor`` per checkpoint, loaded once (tokenizer loading dominates on CPU)."""
    from inference.predictor import Predictor

    cache: dict[str, Predictor] = {}

    def get(name: str) -> Predictor:
        if name not in cache:
            cache[name] = Predictor.from_checkpoint(checkpoints[name])
        return cache[name]

    return get


def load_llava(path: Path):
    from transformers import LlavaForConditionalGeneration

    llava, info = LlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return llava.eval()


def processor_inputs(path: Path, image, question: str, system: str | None = None):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=text, images=[image], return_tensors="pt")


# -- the exported model and processor ------------------------------------------------------------


@pytest.mark.parametrize("name", ["lora", "full", "projector", "dora", "rslora", "pissa"])
def test_llava_export_gives_our_logits_and_greedy_answer(predictors, exports, name):
    predictor = predictors(name)
    llava = load_llava(exports[name])
    image = picture()
    ids, mask, pixels = predictor.prepare([image], [QUESTION])
    with torch.no_grad():
        ours = predictor.model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        theirs = llava(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        other = llava(input_ids=ids, pixel_values=pixels.flip(-1), attention_mask=mask).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (other[:, -1] - theirs[:, -1]).abs().max() > 1e-3  # the image matters: not vacuous

    answer = predictor.answer([image], [QUESTION], SamplingSettings(max_new_tokens=MAX_NEW_TOKENS))[0]
    inputs = processor_inputs(exports[name], image, QUESTION, predictor.system_prompt)
    with torch.no_grad():
        generated = llava.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)[0, inputs["input_ids"].shape[1]:]
    assert generated.tolist() == answer.token_ids
    assert predictor.decode(generated.tolist()) == answer.text


@pytest.mark.parametrize("name", ["lora", "full", "projector"])
def test_processor_gives_our_input_ids_and_pixels(predictors, exports, name):
    from inference.predictor import Predictor

    predictor = predictors(name)
    image = picture()
    for question in (QUESTION, "\nHow many shapes?", "图中有几个形状？"):
        # No system message: the export must insert what our renderer gets for this checkpoint.
        inputs = processor_inputs(exports[name], image, question)
        ids, _, pixels = predictor.prepare([image], [question])
        assert inputs["input_ids"].tolist() == ids.tolist(), question
        torch.testing.assert_close(inputs["pixel_values"], pixels, atol=1e-6, rtol=0)
    # An explicit system message is used as given.
    explicit = Predictor(predictor.model, predictor.tokenizer, system_prompt="Be brief.")
    inputs = processor_inputs(exports[name], image, QUESTION, system="Be brief.")
    assert inputs["input_ids"].tolist() == explicit.prepare([image], [QUESTION])[0].tolist()
    assert int((inputs["input_ids"] == predictor.model.config.image_token_id).sum()) == predictor.model.config.num_image_tokens


def test_a_pad_model_is_answered_padded_from_its_export(predictors, exports):
    """infer.py --checkpoint EXPORT on a model trained with image_aspect: pad pads non-square images,
    as stock transformers (AutoProcessor: LlavaImageProcessor do_pad) and vLLM do: the same pixels
    and prompt ids as AutoProcessor, the same first-token logits as stock Llava on them, and the same
    answer as the trained checkpoint."""
    from inference.predictor import Predictor

    checkpoint = predictors("projector")
    export = Predictor.from_checkpoint(exports["projector"])
    assert export.model.preprocessor.aspect == "pad"
    image = picture()  # 61 x 45: padding changes every pixel row
    inputs = processor_inputs(exports["projector"], image, QUESTION)
    ids, _, pixels = export.prepare([image], [QUESTION])
    assert inputs["input_ids"].tolist() == ids.tolist()
    torch.testing.assert_close(pixels, inputs["pixel_values"], atol=1e-6, rtol=0)
    squash = dataclasses.replace(export.model.preprocessor, aspect="squash")
    assert (squash(image) - pixels[0]).abs().max() > 0.1  # padding really changes the pixels here
    llava = load_llava(exports["projector"])
    with torch.no_grad():
        stock = llava.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)[0, inputs["input_ids"].shape[1]:].tolist()
    settings = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS)
    answers = [p.answer([image], [QUESTION], settings)[0].token_ids for p in (export, checkpoint)]
    assert answers[0] == stock == answers[1]


def test_export_warns_when_vllm_cpu_cannot_serve_the_head_size(exports):
    """The tiny test LMs have head_dim 16 (64 / 4): vLLM's CPU attention serves 32, 64, 80, ...;
    export.py says so on stderr (tests/test_export.py's exports fixture) and in the model card."""
    card = (exports["lora"] / "README.md").read_text()
    assert "head_dim is 16: vLLM's CPU backend serves only head sizes 32, 64, 80" in card


def test_config_processor_and_files_are_what_vllm_reads(checkpoints, exports):
    """vLLM's LLaVA (vllm/model_executor/models/llava.py, siglip.py, vision.py) is not installed
    here; check the export against what that code reads (see docs/export.md)."""
    for name, spec in VARIANTS.items():
        path = exports[name]
        config = json.loads((path / "config.json").read_text())
        ours = json.loads((checkpoints[name] / "config.json").read_text())
        assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["model_type"] == "llava"
        assert config["image_token_index"] == ours["image_token_id"] == 151665
        assert config["image_seq_length"] == ours["num_image_tokens"]
        assert config["vision_feature_layer"] == ours["vision_feature_layer"] == -1
        strategy = {"drop_first": "default", "full": "full"}[spec["select"]]
        assert config["vision_feature_select_strategy"] == strategy
        assert config["projector_hidden_act"] == ours["projector_hidden_act"] == "gelu"
        vision, text = config["vision_config"], config["text_config"]
        # Without vision_use_head: false, vLLM's SiglipVisionTransformer runs the pooling head.
        assert vision["model_type"] == "siglip_vision_model" and vision["vision_use_head"] is False
        assert text["architectures"] == [{"tiny-qwen2": "Qwen2ForCausalLM", "tiny-qwen3": "Qwen3ForCausalLM"}[spec["language"]]]
        # vLLM: get_num_selected_vision_tokens((image_size // patch_size) ** 2, strategy)
        patches = (vision["image_size"] // vision["patch_size"]) ** 2
        assert config["image_seq_length"] == patches - (1 if strategy == "default" else 0)
        processor = json.loads((path / "processor_config.json").read_text())
        assert processor["processor_class"] == "LlavaProcessor"
        assert processor["image_token"] == "<|extra_0|>" and processor["num_additional_image_tokens"] == 0
        assert processor["patch_size"] == vision["patch_size"] and processor["vision_feature_select_strategy"] == strategy
        assert processor["image_processor"]["size"] == {"height": vision["image_size"], "width": vision["image_size"]}
        pads = spec.get("image_aspect") == "pad"
        assert processor["image_processor"]["image_processor_type"].startswith("Llava" if pads else "Siglip")
        assert processor["image_processor"].get("do_pad", False) == pads
        assert (path / "preprocessor_config.json").is_file() and (path / "chat_template.jinja").is_file()
        generation = json.loads((path / "generation_config.json").read_text())
        assert generation["do_sample"] is False and 151665 in generation["suppress_tokens"]
        # The llava-hf key layout: vLLM maps language_model.* / vision_tower.* / multi_modal_projector.*
        # as is, and its SiglipVisionModel.load_weights wants vision_model.* names.
        index = path / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
        assert (len(files) > 1) == (name == "full")
        keys = []
        for file in files:
            with safe_open(str(path / file), "pt") as f:
                keys += list(f.keys())
                assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())
        assert keys and all(k.startswith(("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector."))
                            for k in keys), keys[:5]
        assert {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.bias"} <= set(keys)
        assert not any("lora" in k or "lm_head" in k for k in keys)  # merged; lm_head tied to embed_tokens
        card = (path / "README.md").read_text()
        assert f"vllm serve {path.resolve()}" in card and "chat.completions.create" in card


def _content_loop_detected(template: str) -> bool:
    """The check of vLLM's ``_detect_content_format`` (vllm/renderers/hf.py): a ``for`` loop over
    ``message['content']`` inside a loop over ``messages`` makes vLLM pass image parts to the
    template as ``{"type": "image"}`` ("openai" format) instead of prepending "<image>"."""
    import jinja2
    from jinja2 import nodes

    ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    message_vars = {loop.target.name for loop in ast.find_all(nodes.For)
                    if isinstance(loop.iter, nodes.Name) and loop.iter.name == "messages"}
    for loop in ast.find_all(nodes.For):
        it = loop.iter
        if isinstance(it, nodes.Getitem) and isinstance(it.node, nodes.Name) and it.node.name in message_vars \
                and isinstance(it.arg, nodes.Const) and it.arg.value == "content":
            return True
        if isinstance(it, nodes.Getattr) and isinstance(it.node, nodes.Name) and it.node.name in message_vars \
                and it.attr == "content":
            return True
    return False


def test_chat_template_turns_each_image_part_into_one_placeholder(exports):
    from transformers import AutoTokenizer

    path = exports["lora"]
    template = (path / "chat_template.jinja").read_text()
    assert _content_loop_detected(template)
    tokenizer = AutoTokenizer.from_pretrained(path)  # vLLM's fallback template (when tools are given)
    assert tokenizer.chat_template == template
    # What vLLM ("openai" format) and transformers serve hand the template for an image_url part.
    for image_part in ({"type": "image"}, {"type": "image", "url": "data:image/png;base64,AAAA"},
                       {"type": "image_url", "image_url": {"url": "http://x/y.png"}}):
        messages = [{"role": "user", "content": [image_part, {"type": "text", "text": QUESTION}]}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids.count(151665) == 1
        assert text.endswith(f"<|im_start|>user\n<|extra_0|>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    # Plain-string content, multi-turn, and the newline rule only between an image and its text.
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "S"}]},
        {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}, {"type": "text", "text": "\nB"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "again?"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nA<|extra_0|>\nB<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n<|im_start|>user\nagain?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_default_system_prompt_follows_the_base_template(tokenizer):
    import copy

    from qwen import PromptRenderer, question_messages

    assert default_system_prompt(tokenizer, None).startswith("You are Qwen")
    assert default_system_prompt(tokenizer, "") == ""
    # A Qwen3-style template (no default system turn) gives none, and the export template agrees.
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = (
        "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    assert default_system_prompt(plain, None) is None
    expected = PromptRenderer(plain, 3).render(question_messages(QUESTION), add_generation_prompt=True).input_ids
    plain.chat_template = chat_template("<|extra_0|>", None)
    text = plain.apply_chat_template(question_messages(QUESTION), tokenize=False, add_generation_prompt=True)
    assert plain(text.replace("<|extra_0|>", "<|extra_0|>" * 3), add_special_tokens=False)["input_ids"] == expected


def test_to_llava_matches_and_leaves_the_model_untouched(tiny, tokenizer):
    model = make_model(tiny, finetune="lora", lora=LORA).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = llava.to_llava(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(getattr(m, "merged", False) for m in model.language_model.modules())
    ids = torch.tensor([[1, 2] + [model.config.image_token_id] * model.config.num_image_tokens + [3, 4]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids, pixel_values=pixels).logits,
                                   model(input_ids=ids, pixel_values=pixels).logits, atol=1e-5, rtol=0)


def test_overwrite_replaces_a_directory_and_bfloat16_is_the_default(checkpoints, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "--overwrite" in refused(capsys, ["--checkpoint", str(checkpoints["lora"]), "--output", str(out)])
    assert (out / "keep.txt").read_text() == "mine"
    assert export.main(["--checkpoint", str(checkpoints["lora"]), "--output", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert load_llava(out).dtype == torch.bfloat16


# -- refusals, run directories, atomic writes ------------------------------------------------------


def refused(capsys, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        export.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def test_refusals(tiny, tokenizer, checkpoints, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    timm = base_model(tiny, vision="tiny-timm-vit", vision_backend="timm")
    timm.save_pretrained(tmp_path / "timm")
    assert "timm" in refused(capsys, ["--checkpoint", str(tmp_path / "timm"), "--output", str(tmp_path / "o1")])
    assert not (tmp_path / "o1").exists()

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (incomplete / f).write_bytes((checkpoints["lora"] / f).read_bytes())
    state = load_file(str(checkpoints["lora"] / "model.safetensors"))
    state.pop(sorted(k for k in state if "lora_B" in k)[0])
    save_file(state, str(incomplete / "model.safetensors"))
    assert "incomplete checkpoint" in refused(capsys, ["--checkpoint", str(incomplete), "--output", str(tmp_path / "o2")])
    (incomplete / "model.safetensors").unlink()
    assert "incomplete checkpoint" in refused(capsys, ["--checkpoint", str(incomplete), "--output", str(tmp_path / "o2")])
    assert not (tmp_path / "o2").exists()

    for inside in (checkpoints["lora"], checkpoints["lora"] / "sub", checkpoints["lora"].parent):
        assert "checkpoint" in refused(capsys, ["--checkpoint", str(checkpoints["lora"]),
                                               "--output", str(inside), "--overwrite"])
    assert (checkpoints["lora"] / "model.safetensors").is_file() and not (checkpoints["lora"] / "sub").exists()


def test_cli_refusal_is_one_line_with_status_2(tmp_path):
    (tmp_path / "ckpt").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "export.py"), "--checkpoint", str(tmp_path / "ckpt"),
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "incomplete checkpoint" in result.stderr


def test_run_directory_exports_its_newest_checkpoint(checkpoints, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-5").symlink_to(checkpoints["projector"], target_is_directory=True)
    (run / "checkpoint-10").symlink_to(checkpoints["lora"], target_is_directory=True)
    (run / "checkpoint-20").mkdir()  # incomplete (a save cut short): skipped
    (tmp_path / "out").mkdir()  # an existing empty directory needs no --overwrite
    assert export.main(["--checkpoint", str(run), "--output", str(tmp_path / "out"), "--dtype", "float32"]) == 0
    assert f"`{run / 'checkpoint-10'}`" in (tmp_path / "out" / "README.md").read_text()


def test_a_crash_leaves_no_half_export(checkpoints, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    source = common.Checkpoint(checkpoints["lora"])  # loaded once, for both exports below
    monkeypatch.setattr(llava, "generation_config", crash)  # after the weights were written
    with pytest.raises(RuntimeError, match="disk full"):
        llava.export(source, tmp_path / "new", dtype="float32")
    assert sorted(os.listdir(tmp_path)) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="disk full"):
        llava.export(source, old, dtype="float32", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["old"] and (old / "config.json").read_text() == "{}"


# -- a real OpenAI-compatible server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    """``transformers serve EXPORT_DIR`` on loopback (CPU); killed at teardown."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(exports["lora"]),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not come up in 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, str(exports["lora"])
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def test_transformers_serve_answers_like_our_predictor(predictors, server):
    url, model_name = server
    image = picture()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}},
            {"type": "text", "text": QUESTION},
        ]}],
        "temperature": 0,
        "max_tokens": MAX_NEW_TOKENS,
    }
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        reply = json.loads(response.read())
    predictor = predictors("lora")
    expected = predictor.answer([image], [QUESTION], SamplingSettings(max_new_tokens=MAX_NEW_TOKENS))[0]
    assert expected.text
    assert reply["choices"][0]["message"]["content"].strip() == expected.text
    ids, _, _ = predictor.prepare([image], [QUESTION])
    assert reply["usage"]["prompt_tokens"] == ids.shape[1]


def test_infer_server_against_transformers_serve(predictors, server, tmp_path):
    url, model_name = server
    image_path = tmp_path / "square.png"
    picture().save(image_path)
    predictor = predictors("lora")
    expected = predictor.answer([picture()], [QUESTION], SamplingSettings(max_new_tokens=MAX_NEW_TOKENS))[0]
    result = subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), "--server", url, "--model", model_name, "--image", str(image_path),
         "--question", QUESTION, "--max-new-tokens", str(MAX_NEW_TOKENS), "--greedy"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.text


def test_a_benchmark_scores_the_same_through_transformers_serve(checkpoints, server, tmp_path):
    """evaluate.py --benchmark against the served export and against the checkpoint: same answers,
    same metrics.json numbers."""
    from commands import evaluate
    url, model_name = server
    coco = tmp_path / "coco"
    coco.mkdir()
    colours = {1: (220, 30, 30), 2: (30, 30, 220), 3: (30, 180, 30)}
    for i, colour in colours.items():
        image = picture()
        ImageDraw.Draw(image).rectangle([0, 0, 8, 8], fill=colour)
        image.save(coco / f"COCO_val2014_{i:012d}.jpg", format="PNG")
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"data_subtype": "val2014", "questions": [
        {"image_id": i, "question": QUESTION, "question_id": i} for i in colours]}))
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": i, "question_type": "what color", "answer_type": "other",
         "answers": [{"answer": a} for a in ["red"] * 5 + ["blue"] * 5]} for i in colours]}))
    common = ["--benchmark", "vqav2", "--questions", str(questions), "--annotations", str(annotations),
              "--images", str(coco), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    assert evaluate.main([*common, "--checkpoint", str(checkpoints["lora"]), "--output", str(tmp_path / "local")]) == 0
    assert evaluate.main([*common, "--server", url, "--model", model_name, "--concurrency", "3",
                          "--output", str(tmp_path / "served")]) == 0
    read = lambda name: [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    assert read("served")[1:] == read("local")[1:]  # after the first line, which says who answered:
    assert read("served")[0]["produced_by"]["model"] == {"server": url, "model": model_name}
    assert read("local")[0]["produced_by"]["model"]["fingerprint"].startswith("sha256:")
    local, served = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("local", "served"))
    for key in ("overall", "perQuestionType", "perAnswerType", "count"):
        assert served[key] == local[key], key


# -- hardening ------------------------------------------------------------------------------------


def test_damaged_weights_and_unwritable_outputs_are_refused_before_any_work(checkpoints, tmp_path, capsys):
    import shutil

    damaged = shutil.copytree(checkpoints["lora"], tmp_path / "damaged")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    err = refused(capsys, ["--checkpoint", str(damaged), "--output", str(tmp_path / "o1")])
    assert f"{weights}: incomplete checkpoint: not a whole safetensors file" in err
    (tmp_path / "file.txt").write_text("x")
    for output, message in ((tmp_path / "file.txt" / "export", "is a file, not a directory"),
                            (Path("/proc/vqa-export"), "not writable")):
        assert message in refused(capsys, ["--checkpoint", str(checkpoints["lora"]), "--output", str(output)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "file.txt"]


def test_a_full_disk_is_one_line_and_leaves_nothing(checkpoints, tmp_path, capsys):
    """The export's weights do not fit a 512 KiB file system: ENOSPC while safetensors writes them."""
    from tests.conftest import small_disk

    with small_disk(tmp_path / "small") as disk:
        with pytest.raises(SystemExit) as exit_:
            export.main(["--checkpoint", str(checkpoints["lora"]), "--output", str(disk / "export")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the export's warning (head_dim 16)
        assert err.startswith("error:") and "writing the export failed" in err and "No space left on device" in err
        assert os.listdir(disk) == []  # no export, no partial directory


def test_the_checkpoint_is_resolved_read_and_loaded_once(checkpoints, tmp_path, monkeypatch):
    """export.py opens the checkpoint once for its notes and the format: one resolve, one read of
    config.json, one model load (formerly three of each)."""
    from model.configuration import VQAConfig
    from model.modeling import VQAModel

    counts = {"resolve": 0, "config": 0, "load": 0}
    real = (common.resolve_checkpoint, VQAConfig.from_pretrained.__func__, VQAModel.from_pretrained.__func__)

    def counted(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(common, "resolve_checkpoint", counted("resolve", real[0]))
    monkeypatch.setattr(VQAConfig, "from_pretrained", classmethod(counted("config", real[1])))
    monkeypatch.setattr(VQAModel, "from_pretrained", classmethod(counted("load", real[2])))
    for fmt in ("llava", "gguf"):
        counts.update(resolve=0, config=0, load=0)
        assert export.main(["--checkpoint", str(checkpoints["lora"]), "--output", str(tmp_path / fmt), "--format", fmt]) == 0
        assert counts == {"resolve": 1, "config": 1, "load": 1}, (fmt, counts)


def test_ctrl_c_ends_with_one_line_and_writes_nothing(checkpoints, tmp_path):
    out = tmp_path / "export"
    proc = subprocess.Popen([sys.executable, str(ROOT / "export.py"), "--checkpoint", str(checkpoints["full"]),
                             "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    time.sleep(2)  # past argument parsing, inside the (lazy) imports, loading or writing
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"interrupted: nothing was exported; {out} is as it was"
    assert list(tmp_path.iterdir()) == []  # no export, no partial directory

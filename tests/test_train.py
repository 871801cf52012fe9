"""train.py end to end on the tiny checkpoints: what trains, resume, DeepSpeed, wandb, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, base_model


@pytest.fixture(scope="module")
def merged(tiny, tmp_path_factory) -> dict[str, Path]:
    """A small synthetic data set in the raw formats, merged by the real process_image.py."""
    from tools.make_demo_data import build_demo_data

    base = tmp_path_factory.mktemp("data")
    build_demo_data(base / "demo", num_train=300, num_eval=40, image_size=64, seed=0)
    out = {}
    for name, sources in {
        "train": "[{type: llava, annotations: %s, image_dir: %s}]" % (base / "demo/raw/llava_train.json", base / "demo/images"),
        "eval": "[{type: llava, annotations: %s, image_dir: %s}]" % (base / "demo/raw/llava_eval.json", base / "demo/images"),
    }.items():
        subprocess.run(
            [sys.executable, "process_image.py", "--config", "configs/demo.yaml",
             "--set", f"data.sources={sources}", "--set", f"data.output_dir={base / name}"],
            cwd=ROOT, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        out[name] = base / name / "qa.json"
    return out


def overrides(tiny, merged, out_dir, *extra):
    sets = [
        f"model.vision_model={tiny['tiny-siglip']}",
        f"model.language_model={tiny['tiny-qwen2']}",
        f"data.train_file={merged['train']}",
        "data.eval_file=null",
        "data.num_workers=0",
        "data.group_by_length=false",
        f"train.output_dir={out_dir}",
        "train.per_device_batch_size=4",
        "train.max_steps=6",
        "train.max_time_seconds=null",
        "train.save_steps=3",
        "train.save_total_limit=null",
        "train.logging_steps=1",
        "train.warmup_ratio=0.0",
        "train.learning_rate=1e-2",
        "train.projector_learning_rate=1e-2",
        "train.report_to=[]",
        "train.lora.r=4",
        # The demo config fully fine-tunes its random LM and tower; the tests pin the defaults.
        "train.train_vision_tower=false",
        "train.finetune=lora",
        "train.train_embeddings=true",
        *extra,
    ]
    args = ["--config", "configs/demo.yaml"]
    for s in sets:
        args += ["--set", s]
    return args


def run_train(args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdin=subprocess.DEVNULL,
    )


def trained_state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def losses(out_dir: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out_dir / "progress.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("stage", ["sft", "pretrain"])
def test_short_run_learns_and_changes_only_what_it_should(tiny, merged, tmp_path, stage):
    from model import VQAModel

    out = tmp_path / "run"
    result = run_train(overrides(tiny, merged, out, f"train.stage={stage}", "train.max_steps=12", "data.train_file=" + str(merged["eval"])))
    assert result.returncode == 0, result.stderr[-3000:]
    curve = losses(out)
    assert len(curve) == 12 and sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    keys = set(trained_state(out))
    if stage == "pretrain":
        assert keys == {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                        "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"}
    else:
        assert any("lora_A" in k for k in keys) and all("lora_" in k or k.startswith("multi_modal_projector.") for k in keys)
    model = VQAModel.from_pretrained(out)
    # The bases in the trained model are bitwise the base checkpoints.
    lm_state = {k.replace("base_layer.", ""): v for k, v in model.causal_lm.state_dict().items()}
    for key, value in load_file(str(tiny["tiny-qwen2"] / "model.safetensors")).items():
        assert torch.equal(lm_state[key], value), key
    for key, value in load_file(str(tiny["tiny-siglip"] / "model.safetensors")).items():
        assert torch.equal(model.vision_tower.model.state_dict()[key], value), key
    assert model.vision_tower.training is False
    fresh = base_model(tiny)
    assert not torch.equal(model.multi_modal_projector.linear_1.weight, fresh.multi_modal_projector.linear_1.weight)
    if stage == "sft":
        lora_b = [v for k, v in model.state_dict().items() if "lora_B" in k]
        assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: it trained


def test_full_finetune_with_frozen_embeddings(tiny, merged, tmp_path):
    from model import VQAModel

    out = tmp_path / "run"
    result = run_train(overrides(tiny, merged, out, "train.max_steps=4", "train.finetune=full", "train.train_embeddings=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = trained_state(out)
    base = load_file(str(tiny["tiny-qwen2"] / "model.safetensors"))
    lm_keys = {k.removeprefix("language_model.") for k in saved if k.startswith("language_model.")}
    # Every LM weight but the (tied) embedding is saved, and the layers changed.
    assert lm_keys == set(base) - {"model.embed_tokens.weight", "lm_head.weight"}
    assert any(not torch.equal(saved[f"language_model.{k}"], base[k]) for k in lm_keys)
    model = VQAModel.from_pretrained(out)
    assert torch.equal(model.get_input_embeddings().weight, base["model.embed_tokens.weight"])


def test_trainable_tower_is_trained_saved_and_reloaded(tiny, merged, tmp_path):
    from model import VQAModel

    out = tmp_path / "run"
    result = run_train(overrides(tiny, merged, out, "train.max_steps=4", "train.train_vision_tower=true",
                                 "train.vision_learning_rate=1e-2"))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = trained_state(out)
    base = load_file(str(tiny["tiny-siglip"] / "model.safetensors"))
    tower_keys = {k.removeprefix("vision_tower.model.") for k in saved if k.startswith("vision_tower.")}
    # Every tower weight the forward pass uses is saved (the pooling head is never run, so it is not).
    assert tower_keys and tower_keys <= base.keys()
    assert any(not torch.equal(saved[f"vision_tower.model.{k}"], base[k]) for k in tower_keys)
    model = VQAModel.from_pretrained(out)
    for k in tower_keys:
        assert torch.equal(model.vision_tower.model.state_dict()[k], saved[f"vision_tower.model.{k}"]), k
    assert model.vision_tower.training is False  # a trained tower still predicts in eval mode

def test_resume_gives_the_same_weights_as_a_straight_run(tiny, merged, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("train.max_steps=8", "train.save_steps=4", "train.lr_scheduler=cosine", "data.group_by_length=true")
    first = run_train(overrides(tiny, merged, straight, *common))
    assert first.returncode == 0, first.stderr[-3000:]
    part1 = run_train(overrides(tiny, merged, split, *common, "train.stop_at_step=4"))
    assert part1.returncode == 0, part1.stderr[-3000:]
    assert (split / "checkpoint-4" / "trainer_state.json").is_file() and not (split / "checkpoint-8").exists()
    # A checkpoint cut off mid-write (no trainer state yet) must never be resumed from.
    (split / "checkpoint-6").mkdir()
    (split / "checkpoint-6" / "config.json").write_text("{}")
    part2 = run_train(overrides(tiny, merged, split, *common))
    assert part2.returncode == 0, part2.stderr[-3000:]
    assert "resuming from" in part2.stdout and "checkpoint-4" in part2.stdout
    a, b = trained_state(straight), trained_state(split)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    # the resumed run really continued (weights differ from the stop point)
    mid = trained_state(split / "checkpoint-4")
    assert any(not torch.equal(mid[k], b[k]) for k in b)


def test_wandb_without_api_key_logs_offline_and_never_prompts(tiny, merged, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update({"HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})  # no ~/.netrc with a key
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", *overrides(tiny, merged, out, "train.report_to=[wandb]", "train.max_steps=2")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logging offline" in result.stdout
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


@pytest.mark.parametrize(
    "extra, message",
    [
        # a path that looks like a hub id: "not found" at once, not 50 s of retries against the hub
        (("model.language_model=checkpoints/no-such-model",), "model.language_model: not found: checkpoints/no-such-model"),
        (("model.vision_model=nobody/no-such-tower",), "hub model nobody/no-such-tower is not in the local cache"),
        (("train.per_device_batch_size=0",), "train.per_device_batch_size must be at least 1, got 0"),
        (("train.lora.target_modules=[q_proj, qkv]",), "train.lora.target_modules: ['qkv'] match no module"),
        (("train.init_from=/nonexistent/pretrain",), "train.init_from: /nonexistent/pretrain: no such checkpoint directory"),
        (("train.output_dir=/proc/vqa-run",), "train.output_dir: /proc/vqa-run: not writable"),
        (("generation.temperature=.nan",), "generation.temperature: expected a finite number"),
        (("model.quantize=nf4", "train.finetune=full"), "model.quantize: nf4 needs train.stage sft with train.finetune lora"),
        (("model.quantize=nf4", "train.stage=pretrain"), "model.quantize: nf4 needs train.stage sft with train.finetune lora"),
        (("model.quantize=fp4", "train.train_vision_tower=true"), "QLoRA keeps the tower as configured and frozen"),
        (("model.quantize=nf4", "train.lora.init=pissa"), "train.lora.init pissa with model.quantize nf4"),
        (("train.lora.method=qlora",), "train.lora.method"),
        (("data.train_file=/nonexistent/qa.json",), "data.train_file: /nonexistent/qa.json does not exist"),
        (("train.deepspeed=configs/zero3.json",), "ZeRO-3 needs a distributed launcher"),
        (("train.learnin_rate=1",), "unknown key train.learnin_rate"),
        (("train.train_embeddings=false", "train.stage=pretrain"), "only applies to stages sft and dpo with finetune full"),
    ],
)
def test_refuses_bad_configs_before_any_work(tiny, merged, tmp_path, capsys, extra, message):
    started = time.monotonic()
    args = overrides(tiny, merged, tmp_path / "run", *extra)
    if extra[0].startswith(("model.language_model", "model.vision_model")):  # own process: an offline hub, as for a user
        result = run_train(args, timeout=120)
        code, stderr = result.returncode, result.stderr
    else:  # the same main() in-process (importing torch once per case would dominate the test)
        from commands import train
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            train.main(args)
        code, stderr = exit_.value.code, capsys.readouterr().err
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - started < 60  # no retries against a hub that cannot be reached


def test_init_from_an_empty_or_cut_off_checkpoint_is_one_line(tiny, merged, tmp_path):
    (tmp_path / "empty").mkdir()
    cut = tmp_path / "cut"
    base_model(tiny).save_pretrained(cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    for path, message in ((tmp_path / "empty", "not a checkpoint"), (cut, "not a whole safetensors file")):
        result = run_train(overrides(tiny, merged, tmp_path / "run", f"train.init_from={path}"), timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.startswith("error: train.init_from: ") and message in result.stderr, result.stderr


def test_ctrl_c_stops_with_one_line_and_keeps_the_checkpoints(tiny, merged, tmp_path):
    out = tmp_path / "run"
    args = overrides(tiny, merged, out, "train.max_steps=100000", "train.save_steps=2", "train.logging_steps=1")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: training stopped; the checkpoint-N directories in") and "resume" in last
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()


def test_empty_data_file_is_refused(tiny, merged, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "qa.json").write_text("[]")
    (empty / "images.json").write_text("{}")
    result = run_train(overrides(tiny, merged, tmp_path / "run", f"data.train_file={empty / 'qa.json'}"), timeout=120)
    assert result.returncode == 2 and "holds no records" in result.stderr


QLORA = ("model.quantize=nf4", "model.quantize_compute_dtype=float32",
         "train.lora.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]")


@pytest.mark.parametrize("zero", ["zero2", "zero3", "zero2-qlora"])
def test_deepspeed_trains_on_two_cpu_processes(tiny, merged, tmp_path, zero):
    """ZeRO-2 and ZeRO-3 under torchrun with the gloo backend, and ZeRO-2 over a 4-bit (NF4) LM;
    the checkpoint (ZeRO-3: weights gathered from both ranks at save time) loads with from_pretrained."""
    from model import VQAModel

    out = tmp_path / "run"
    port = {"zero2": "29533", "zero3": "29534", "zero2-qlora": "29535"}[zero]
    extra = QLORA if zero.endswith("qlora") else ()
    args = overrides(tiny, merged, out, f"train.deepspeed=configs/{zero.split('-')[0]}.json", "train.max_steps=4",
                     "train.save_steps=4", *extra)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, "train.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
    model = VQAModel.from_pretrained(out / "checkpoint-4")
    assert model.config.finetune == "lora" and model.config.quantize == ("nf4" if extra else "none")
    assert len(losses(out)) == 4
    if extra:  # only the adapter and the projector were saved, never 4-bit base weights
        assert all("lora_" in k or k.startswith("multi_modal_projector.") for k in trained_state(out / "checkpoint-4"))
    # Real trained values were saved (ZeRO-3 keeps only a shard of each weight on a rank).
    lora_b = [v for k, v in model.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: it trained
    # The frozen bases are bitwise the base checkpoints.
    for key, value in load_file(str(tiny["tiny-siglip"] / "model.safetensors")).items():
        assert torch.equal(model.vision_tower.model.state_dict()[key], value), key


def test_cpu_runs_keep_freed_vocabulary_sized_blocks_in_the_heap():
    # glibc's mallinfo2 reports the free bytes held in the heap (fordblks) and the bytes in mmapped
    # blocks (hblkhd). A 64 MB tensor freed after keep_freed_memory must stay in the heap; by
    # default glibc mmaps it and returns it to the kernel. Own process: mallopt is process-wide.
    script = """
import ctypes, torch
from training.memory import keep_freed_memory
from config import TrainSettings
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MallInfo2
def probe():
    x = torch.empty(16 * 2**20); mapped = libc.mallinfo2().hblkhd; del x
    return mapped, libc.mallinfo2().fordblks
before = probe()
applied = keep_freed_memory(TrainSettings(use_cpu=True))
print(before[0] >= 2**26, applied, probe()[1] >= 2**26)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, text=True)
    assert out.stdout.split()[-3:] == ["True", "True", "True"], out.stdout + out.stderr


def _tiny_config(tiny, *extra):
    from config import load_config

    return load_config(ROOT / "configs/demo.yaml", [
        f"model.vision_model={tiny['tiny-siglip']}", f"model.language_model={tiny['tiny-qwen2']}",
        "train.train_vision_tower=false", "train.finetune=lora", "train.train_embeddings=true", *extra,
    ])


def test_learning_rate_groups_take_zero_as_a_rate(tiny):
    from training.build import param_groups
    from training.stages import build_model

    def rates(*extra):
        cfg = _tiny_config(tiny, "train.learning_rate=1e-3", *extra)
        model = build_model(cfg)
        projector = {id(p) for p in model.multi_modal_projector.parameters()}
        return {g["lr"] for g in param_groups(model, cfg.train) if id(g["params"][0]) in projector}

    assert rates("train.projector_learning_rate=0.0") == {0.0}  # not silently the LM's rate
    assert rates("train.projector_learning_rate=null") == {1e-3}
    assert rates("train.projector_learning_rate=5e-5") == {5e-5}


def test_init_from_takes_an_earlier_stage_and_refuses_another_layout(tiny, tmp_path, capsys):
    from errors import UserError
    from training.stages import build_model

    # A pretrain-stage checkpoint: a projector with known weights.
    pre = base_model(tiny)
    pre.configure_training("projector")
    with torch.no_grad():
        for p in pre.multi_modal_projector.parameters():
            p.uniform_(-1, 1)
    pre.save_pretrained(tmp_path / "pretrain")
    model = build_model(_tiny_config(tiny, f"train.init_from={tmp_path / 'pretrain'}"))
    for key, value in pre.multi_modal_projector.state_dict().items():
        assert torch.equal(model.multi_modal_projector.state_dict()[key], value), key
    assert all(not v.any() for k, v in model.state_dict().items() if "lora_B" in k)  # LoRA starts fresh

    # A full fine-tune checkpoint has LM weights a LoRA model does not: refused, nothing half-loaded.
    full = base_model(tiny)
    full.configure_training("full")
    full.save_pretrained(tmp_path / "full")
    with pytest.raises(UserError, match="train.init_from:"):
        build_model(_tiny_config(tiny, f"train.init_from={tmp_path / 'full'}"))


@pytest.mark.parametrize("method, init", [("dora", "default"), ("rslora", "default"), ("lora", "pissa")])
def test_adapter_variants_train_resume_and_answer(tiny, merged, tmp_path, capsys, monkeypatch, method, init):
    """DoRA, rsLoRA and a PiSSA start: a run split in two resumes to the weights of a straight run
    (the PiSSA residual is rebuilt on load, DoRA's magnitudes are saved), and infer.py answers
    from the checkpoint. The exports' equality with the adapter model is tested in test_export.py."""
    from commands import infer
    from model import VQAModel

    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("train.max_steps=4", "train.save_steps=2", f"train.lora.method={method}", f"train.lora.init={init}")
    first = run_train(overrides(tiny, merged, straight, *common))
    assert first.returncode == 0, first.stderr[-3000:]
    part1 = run_train(overrides(tiny, merged, split, *common, "train.stop_at_step=2"))
    assert part1.returncode == 0, part1.stderr[-3000:]
    part2 = run_train(overrides(tiny, merged, split, *common))
    assert part2.returncode == 0 and "resuming from" in part2.stdout, part2.stderr[-3000:]
    a, b = trained_state(straight), trained_state(split)
    assert a.keys() == b.keys() and all("lora_" in k or k.startswith("multi_modal_projector.") for k in a)
    assert any("lora_magnitude_vector" in k for k in a) == (method == "dora")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)

    # Loaded as infer.py loads it, the language model equals peft's own adapter model built from the
    # base checkpoint with the same settings and the saved adapter weights.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    assert any("lora_pissa_A0" in k for k in a) == (init == "pissa")  # PiSSA's starting factors travel with it
    if init == "pissa":  # ... so a load rebuilds the residual without peft's SVD (minutes for a real LM)
        def no_svd(*args, **kwargs):
            raise AssertionError("the SVD ran again on load")

        with monkeypatch.context() as m:
            m.setattr(torch.linalg, "svd", no_svd)
            model = VQAModel.from_pretrained(straight).eval()
    else:
        model = VQAModel.from_pretrained(straight).eval()
    reference = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["tiny-qwen2"]), LoraConfig(
        r=4, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_dora=method == "dora", use_rslora=method == "rslora", init_lora_weights="pissa" if init == "pissa" else True))
    adapter = {k.removeprefix("language_model."): v for k, v in a.items()
               if k.startswith("language_model.") and "lora_pissa_" not in k}  # our saved starting factors: not peft's
    missing, unexpected = reference.load_state_dict(adapter, strict=False)
    assert not unexpected and not [k for k in missing if "lora_" in k]
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.language_model(input_ids=ids).logits, reference.eval()(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)
        reference.disable_adapter_layers()  # not vacuous: the adapter matters
        assert (model.language_model(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max() > 1e-4

    # Continuing this adapter (train.init_from) under other adapter settings is refused before anything loads.
    from config import load_config
    from errors import UserError
    from training.checks import validate

    def sets(*extra):
        args = overrides(tiny, merged, tmp_path / "next", *common, f"train.init_from={straight}", *extra)
        return [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]

    validate(load_config("configs/demo.yaml", sets()))  # the same settings: fine
    other = "train.lora.init=default" if init == "pissa" else "train.lora.method=lora"
    with pytest.raises(UserError, match="holds a LoRA adapter trained with other train.lora settings"):
        validate(load_config("configs/demo.yaml", sets(other)))

    picture = next(p for p in sorted((merged["train"].parent.parent / "demo" / "images").rglob("*")) if p.is_file())
    capsys.readouterr()
    assert infer.main(["--checkpoint", str(straight), "--image", str(picture), "--question", "What colour is it?",
                       "--max-new-tokens", "4"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_resume_from_another_run_directory_keeps_its_history(tiny, tmp_path):
    """train.resume=PATH into a new output_dir: the checkpoint's own run.json (its sessions as saved
    with it) starts the new record, so --lineage still reaches where the model came from."""
    from training.lineage import RunRecord

    checkpoint = tmp_path / "old" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    earlier = {"started": "2026-12-01T00:00:00+00:00", "status": "interrupted", "parent": {"path": "/sft"}}
    (checkpoint / "run.json").write_text(json.dumps({"sessions": [earlier]}))
    RunRecord(_tiny_config(tiny, f"train.output_dir={tmp_path / 'new'}"), checkpoint, 4).write()
    sessions = json.loads((tmp_path / "new" / "run.json").read_text())["sessions"]
    assert sessions[0] == earlier and sessions[1]["resumed_from"] == str(checkpoint)
    assert sessions[1]["steps"] == {"start": 4, "end": None} and sessions[1]["status"] == "running"

"""``train.py --plan`` (training/plan.py): the memory estimate against what was measured.

Two references: the peaks the H100 bench measured at the real shapes (bench/RESULTS.md), and the
peak tensor memory of a real training step of the tiny models on this CPU, counted op by op.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from config import Config

# Public config.json of the bench's models (there is no model hub here): Qwen2.5-0.5B/1.5B/7B-Instruct
# and google/siglip-so400m-patch14-384 (a full SigLIP config; the tower reads its vision_config).
QWEN25 = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False, vocab_size=152064),
}
SIGLIP_SO400M_384 = {
    "architectures": ["SiglipModel"], "model_type": "siglip",
    "text_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_text_model",
                    "num_attention_heads": 16, "num_hidden_layers": 27},
    "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14},
}

# bench/RESULTS.md, "GPU training throughput (bench/gpu_train.py)": the rows of the H100 table
# with a "peak GiB" (torch.cuda.max_memory_allocated): LM, fine-tune, batch, accumulation,
# activation checkpointing, compiled layers, peak GiB. Each sample: 728 image + 193 text tokens,
# 128 of them supervised; LoRA r=16 on all projections; bf16 autocast over fp32 master weights.
H100_PEAKS = [
    ("1.5b", "full", 8, 1, True, False, 25.0),
    ("1.5b", "lora", 8, 1, True, False, 6.4),
    ("0.5b", "full", 16, 1, True, False, 11.7),
    ("1.5b", "full", 8, 1, True, True, 24.9),
    ("1.5b", "full", 16, 2, True, True, 30.5),
    ("1.5b", "full", 8, 1, False, True, 37.7),
    ("1.5b", "full", 12, 1, False, True, 45.9),
    ("1.5b", "lora", 16, 1, True, True, 9.1),
    ("0.5b", "full", 32, 1, True, True, 16.4),
]


def write_bases(root: Path) -> dict[str, Path]:
    """Folders holding only config.json (the planner must never need the weights), by short name."""
    paths = {}
    for name, shape in QWEN25.items():
        conf = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
                "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, **shape}
        paths[name] = root / f"qwen2.5-{name}"
        paths[name].mkdir(exist_ok=True)
        (paths[name] / "config.json").write_text(json.dumps(conf))
    paths["siglip"] = root / "siglip-so400m-patch14-384"
    paths["siglip"].mkdir(exist_ok=True)
    (paths["siglip"] / "config.json").write_text(json.dumps(SIGLIP_SO400M_384))
    return paths


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return write_bases(tmp_path_factory.mktemp("bases"))


def bench_config(bases, lm: str, finetune: str, batch: int, accum: int, checkpointing: bool, compiled: bool) -> Config:
    cfg = Config()
    cfg.model.vision_model, cfg.model.language_model = str(bases["siglip"]), str(bases[lm])
    t = cfg.train
    t.finetune, t.per_device_batch_size, t.gradient_accumulation_steps = finetune, batch, accum
    t.activation_checkpointing, t.torch_compile = checkpointing, compiled
    return cfg


@pytest.mark.parametrize("row", H100_PEAKS, ids=lambda r: f"{r[0]}-{r[1]}-b{r[2]}x{r[3]}-{'ckpt' if r[4] else 'nockpt'}"
                                                        f"-{'compiled' if r[5] else 'eager'}")
def test_the_estimate_matches_the_measured_h100_peaks(bases, row):
    from training.plan import estimate, read_shapes

    *settings, measured = row
    cfg = bench_config(bases, *settings)
    shapes = read_shapes(cfg)
    assert shapes.tower.image_tokens == 728 and shapes.lm.vocab == 151936
    est = estimate(cfg, shapes, gpus=1, gpu_gib=80)
    assert est.workload.seq == 921 and est.workload.supervised == 128
    # what torch.cuda.max_memory_allocated measures: the peak without context and allocator slack
    assert est.allocated_gib == pytest.approx(measured, rel=0.15), est.phases
    assert est.allocated_gib == pytest.approx(measured, rel=0.05), "was within 3% when written (bench/RESULTS.md)"


def test_parameter_counts_are_the_published_ones(bases):
    from training.plan import lm_shape

    assert lm_shape(str(bases["0.5b"])).params == 494_032_768
    assert lm_shape(str(bases["1.5b"])).params == 1_543_714_304
    shape = lm_shape(str(bases["7b"]))
    assert shape.params == 7_615_616_512 and not shape.tied
    # LoRA r=16 on all projections of 1.5B: 28 layers x 16 x (in + out) of its 7 linear layers
    assert lm_shape(str(bases["1.5b"])).lora(16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"], dora=False)[0] == 18_464_768


# -- against a real step on the CPU -------------------------------------------------------------


class LiveBytes:
    """A TorchDispatchMode that counts the bytes of live tensor storages after every op: on a CPU,
    what torch.cuda.max_memory_allocated counts on a GPU (less the allocator's rounding)."""

    def __new__(cls, *tensors):
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.live, self.current, self.peak = {}, 0, 0

            def add(self, values):
                for value in values:
                    if isinstance(value, torch.Tensor):
                        ref = StorageWeakRef(value.untyped_storage())
                        if ref.cdata not in self.live:
                            self.live[ref.cdata] = (ref, value.untyped_storage().nbytes())
                            self.current += self.live[ref.cdata][1]

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for key, (ref, size) in list(self.live.items()):  # freed since the last op
                    if ref.expired():
                        del self.live[key]
                        self.current -= size
                self.add(tree_flatten(out)[0])
                self.peak = max(self.peak, self.current)
                return out

        mode = Mode()
        mode.add(tensors)
        return mode


# (finetune, activation checkpointing, bf16 autocast, train_embeddings). The tiny models' 151,936-row
# vocabulary makes the logits and the embedding most of it, at these widths. A tied embedding that
# trains under autocast is left out: autograd adds its two gradients in place there, but not while
# a dispatch mode watches (a new tensor), so the count would measure the mode, not the step.
CPU_STEPS = [("full", False, False, False), ("lora", True, True, True), ("full", True, False, True)]


@pytest.mark.parametrize("finetune,checkpointing,bf16,embeddings", CPU_STEPS,
                         ids=["full-fp32-frozen-embeddings", "lora-bf16-ckpt", "full-fp32-ckpt-tied-embedding"])
def test_the_estimate_matches_a_real_cpu_step(tiny, finetune, checkpointing, bf16, embeddings):
    import torch

    from tests.conftest import make_model
    from training.build import compiled
    from training.plan import estimate, read_shapes

    cfg = Config()
    cfg.model.vision_model, cfg.model.language_model, cfg.model.dtype = str(tiny["tiny-siglip"]), str(tiny["tiny-qwen2"]), "float32"
    t = cfg.train
    t.finetune, t.activation_checkpointing, t.bf16, t.train_embeddings = finetune, checkpointing, bf16, embeddings
    rows, text, answer = 2, 40, 16
    t.per_device_batch_size = rows
    lora = {"r": t.lora.r, "alpha": t.lora.alpha, "dropout": t.lora.dropout, "target_modules": t.lora.target_modules}
    model = compiled(make_model(tiny, finetune=finetune, lora=lora if finetune == "lora" else None,
                                train_embeddings=embeddings), t).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    generator = torch.Generator().manual_seed(0)
    image = torch.full((rows, model.config.num_image_tokens), model.config.image_token_id)
    ids = torch.cat([image, torch.randint(0, 151643, (rows, text), generator=generator)], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -answer:] = ids[:, -answer:]
    size = model.vision_tower.preprocessor.size
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
             "pixel_values": torch.randn(rows, 3, size, size, generator=generator)}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step creates AdamW's states
    held = [*model.parameters(), *model.buffers(), *batch.values(),
            *(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))]
    with LiveBytes(*held) as counter:
        step()
    measured = counter.peak / 2**30
    est = estimate(cfg, read_shapes(cfg), gpus=1, gpu_gib=80, text_tokens=text, answer_tokens=answer)
    # within 0.3% when written; the rest of the budget is for kernels that change what they keep
    assert est.allocated_gib == pytest.approx(measured, rel=0.05), (measured, est.phase, est.phases)


# -- train.py --plan ----------------------------------------------------------------------------


def write_config(path, bases, lm: str, **train) -> str:
    import yaml

    path.write_text(yaml.safe_dump({"model": {"vision_model": str(bases["siglip"]), "language_model": str(bases[lm])},
                                    "train": train}))
    return str(path)


def plan_output(capsys, argv: list[str]) -> str:
    from commands.train import main

    assert main(argv) == 0
    return capsys.readouterr().out


def test_plan_prints_the_breakdown_and_trains_nothing(bases, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", bases, "1.5b", finetune="full", per_device_batch_size=8,
                          output_dir=str(tmp_path / "run"))
    out = plan_output(capsys, ["--config", config, "--plan", "--gpu-memory", "80"])
    for line in ("language model weights (fp32 master, trained)", "AdamW states (2 x fp32)", "gradients (fp32)",
                 "vision tower weights (bfloat16, frozen)", "peak allocated", "CUDA context + allocator slack"):
        assert line in out
    assert "8 rows x 921 tokens (728 image + 193 text, 128 supervised)" in out
    total = float(re.search(r"^  total +([\d.]+)$", out, re.M).group(1))
    assert re.search(r"^  GPU +80\.00  fits$", out, re.M) and 25 < total < 30
    assert "changes that fit" not in out
    assert not (tmp_path / "run").exists()  # nothing was set up for training


def test_a_7b_run_on_a_24gb_card_gets_changes_whose_estimates_fit(bases, tmp_path, capsys):
    """The issue's example: LoRA on a 7B language model, batch 8, no activation checkpointing."""
    config = write_config(tmp_path / "c.yaml", bases, "7b", finetune="lora", per_device_batch_size=8,
                          activation_checkpointing=False)
    out = plan_output(capsys, ["--config", config, "--plan", "--gpu-memory", "24"])
    assert re.search(r"^  GPU +24\.00  does not fit \([\d.]+ GiB over\)$", out, re.M)
    suggestions = re.findall(r"^  \d+\. (.+): ([\d.]+) GiB.*\n +((?:--set \S+ ?)+)$", out, re.M)
    assert suggestions and suggestions[0][0] == "activation checkpointing", out
    assert any("model.quantize=nf4" in s[2] for s in suggestions), out
    for label, gib, flags in suggestions:
        assert float(gib) <= 24
        # the same config with the suggested overrides: its own plan says it fits, with that total
        again = plan_output(capsys, ["--config", config, "--plan", "--gpu-memory", "24", *flags.split()])
        assert re.search(r"^  GPU +24\.00  fits$", again, re.M), (label, again)
        assert re.search(rf"^  total +{re.escape(gib)}$", again, re.M), (label, again)


def test_zero_stages_shard_what_they_should(bases):
    from training.plan import DeepSpeed, estimate, read_shapes

    cfg = bench_config(bases, "7b", "full", 1, 1, True, False)
    shapes = read_shapes(cfg)
    one, eight = (estimate(cfg, shapes, gpus=g, gpu_gib=80, deepspeed=DeepSpeed(2)) for g in (1, 8))
    adam = {i.name: i.gib for i in one.items}["fp32 master weights + AdamW states (ZeRO-2)"]
    assert {i.name: i.gib for i in eight.items}["fp32 master weights + AdamW states (ZeRO-2)"] == pytest.approx(adam / 8)
    zero3 = estimate(cfg, shapes, gpus=8, gpu_gib=80, deepspeed=DeepSpeed(3))
    offload = estimate(cfg, shapes, gpus=8, gpu_gib=80, deepspeed=DeepSpeed(3, True, True))
    assert offload.allocated_gib < zero3.allocated_gib < eight.allocated_gib < one.allocated_gib


@pytest.mark.parametrize("value", ["0", "-4", "nan", "lots"])
def test_a_bad_gpu_memory_is_a_one_line_error(value, capsys):
    from commands.train import main

    with pytest.raises(SystemExit) as exit_:
        main(["--plan", "--gpu-memory", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --gpu-memory:"), err


def test_a_base_that_is_not_there_is_a_one_line_error(bases, tmp_path, capsys):
    from commands.train import main

    config = write_config(tmp_path / "c.yaml", bases, "0.5b")
    with pytest.raises(SystemExit) as exit_:
        main(["--config", config, "--plan", "--set", "model.language_model=Qwen/Not-A-Model-7B"])  # HF_HUB_OFFLINE=1
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.language_model" in err and "Qwen/Not-A-Model-7B" in err, err


def h100_table(root) -> str:
    """The markdown table of bench/RESULTS.md, "Memory planner vs measured peaks": the estimate of
    every measured H100 row next to its peak (``python -m tests.test_plan``)."""
    from training.plan import estimate, read_shapes

    paths = write_bases(Path(root))
    lines = ["| LM | fine-tune | batch | activation ckpt | compiled | measured peak GiB | estimate GiB | error | peak at |",
             "|---|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    for lm, finetune, batch, accum, ckpt, comp, measured in H100_PEAKS:
        cfg = bench_config(paths, lm, finetune, batch, accum, ckpt, comp)
        est = estimate(cfg, read_shapes(cfg), gpus=1, gpu_gib=80)
        error = est.allocated_gib / measured - 1
        worst = max(worst, abs(error))
        lines.append(f"| {lm.upper()} | {'full' if finetune == 'full' else 'LoRA r=16'} | "
                     f"{batch if accum == 1 else f'{batch} x {accum} accum'} | {'yes' if ckpt else 'no'} | "
                     f"{'yes' if comp else 'no'} | {measured} | {est.allocated_gib:.2f} | {100 * error:+.1f}% | {est.phase} |")
    return "\n".join(lines) + f"\n\nworst relative error: {100 * worst:.1f}%"


if __name__ == "__main__":
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as work:
        print(h100_table(work))


# -- serving: which precision fits ----------------------------------------------------------------

# Qwen2.5-7B by hand: 28 layers of q, o (3584 x 3584), k, v (3584 x 512), gate, up, down (3584 x 18944)
LINEARS_7B = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)
SO400M_TOWER = 412_987_248           # SigLIP so400m-384's vision model without its pooling head
PROJECTOR_7B = 1152 * 3584 + 3584 + 3584 * 3584 + 3584


def test_serving_memory_is_the_hand_arithmetic(bases):
    from training.plan import GIB, read_shapes, serving_estimates

    shapes = read_shapes(bench_config(bases, "7b", "lora", 1, 1, True, False))
    assert shapes.lm.quantizable == LINEARS_7B and shapes.tower.params == SO400M_TOWER
    fp16, int8, int4 = serving_estimates(shapes, context=4096, gpu_gib=24)
    rest = 7_615_616_512 - LINEARS_7B + SO400M_TOWER + PROJECTOR_7B  # stays 16-bit at every precision
    assert fp16.weights_gib * GIB == pytest.approx(2 * (rest + LINEARS_7B))  # 14.99 GiB
    assert int8.weights_gib * GIB == pytest.approx(2 * rest + (1 + 3 / 128) * LINEARS_7B)  # + fp16 scale, int8 zero / 128
    assert int4.weights_gib * GIB == pytest.approx(2 * rest + (0.5 + 2.5 / 128) * LINEARS_7B)
    # K and V, 28 layers, 4 key-value heads of 128, fp16, 4096 tokens: 224 MiB a sequence
    assert fp16.kv_per_sequence_gib * GIB == 2 * 28 * 4 * 128 * 2 * 4096 == int4.kv_per_sequence_gib * GIB
    assert fp16.budget_gib == pytest.approx(0.9 * 24)
    assert fp16.fits and fp16.sequences == int((21.6 - fp16.weights_gib - fp16.activations_gib - 0.5) / (224 / 1024))


@pytest.mark.parametrize("gpu, verdict", [(24, "serve it in fp16"), (12, "serve it in int8"), (8, "serve it in int4"),
                                          (6, "no precision fits 6.0 GiB")])
def test_plan_says_which_precision_serves_on_the_card(bases, tmp_path, capsys, gpu, verdict):
    config = write_config(tmp_path / "c.yaml", bases, "7b", finetune="lora")
    out = plan_output(capsys, ["--config", config, "--plan", "--gpu-memory", str(gpu), "--context", "4096"])
    assert f"{0.9 * gpu:.2f} GiB; 4096-token sequences" in out
    rows = dict(re.findall(r"^  (fp16|int8|int4) +[\d.]+ +[\d.]+ +[\d.]+  (yes|no) ", out, re.M))
    assert len(rows) == 3 and verdict in out
    fitting = [p for p in ("fp16", "int8", "int4") if rows[p] == "yes"]
    assert (verdict.split()[-1] == fitting[0]) if fitting else "no precision" in verdict


def test_the_serving_context_defaults_to_one_training_sample(bases, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", bases, "1.5b", finetune="lora")
    out = plan_output(capsys, ["--config", config, "--plan", "--gpu-memory", "24"])
    assert "921-token sequences" in out  # 728 image tokens + 193 text tokens

"""The dpo stage: the losses against hand computation, log-probabilities against the SFT loss, one
tower pass per pair, no full-vocabulary tensor, ln 2 at step 0, preference data in three layouts,
short runs through train.py (learning, resume, ZeRO-2), and refusals."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import DPOSettings
from tests.conftest import ROOT, make_model
from tests.test_train import losses, merged, overrides, run_train, trained_state  # noqa: F401 (merged: a fixture)
from training.dpo import preference_loss, sequence_logprobs

# -- the losses ----------------------------------------------------------------------------------

PC, PR, RC, RR = [-1.0, -3.0, -2.5], [-2.0, -1.5, -2.5], [-1.2, -2.0, -3.0], [-1.8, -2.2, -2.0]


def hand(loss: str, beta: float, eps: float = 0.0) -> list[float]:
    """The published formulas, written with the math module, one pair at a time."""
    out = []
    for pc, pr, rc, rr in zip(PC, PR, RC, RR):
        h = (pc - pr) - (rc - rr)
        if loss == "sigmoid":  # DPO (Rafailov et al. 2023, eq. 7), conservative with eps
            sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
            out.append(-(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h)))
        elif loss == "ipo":  # IPO (Azar et al. 2023, eq. 17)
            out.append((h - 1 / (2 * beta)) ** 2)
        else:  # hinge (SLiC, Zhao et al. 2023)
            out.append(max(0.0, 1 - beta * h))
    return out


@pytest.mark.parametrize("loss, beta, eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0),
                                             ("ipo", 1.0, 0.0), ("hinge", 0.1, 0.0), ("hinge", 2.0, 0.0)])
def test_losses_and_rewards_equal_the_formulas(loss, beta, eps):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    losses_, chosen, rejected = preference_loss(t(PC), t(PR), t(RC), t(RR),
                                                DPOSettings(loss=loss, beta=beta, label_smoothing=eps))
    assert losses_.tolist() == pytest.approx(hand(loss, beta, eps), rel=1e-12)
    assert chosen.tolist() == pytest.approx([beta * (a - b) for a, b in zip(PC, RC)], rel=1e-12)
    assert rejected.tolist() == pytest.approx([beta * (a - b) for a, b in zip(PR, RR)], rel=1e-12)


# -- log-probabilities on the real model ---------------------------------------------------------


def labelled(model, tokenizer, question: str, answer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and labels of one conversation, as the training data renders it."""
    from qwen import PromptRenderer, record_messages

    renderer = PromptRenderer(tokenizer, model.config.num_image_tokens)
    rendered = renderer.render(record_messages([{"role": "user", "content": "<|extra_0|>\n" + question},
                                                {"role": "assistant", "content": answer}], system_prompt=""))
    return torch.tensor(rendered.input_ids), torch.tensor(rendered.labels)


def pixels(model, n: int, seed: int = 0) -> torch.Tensor:
    size = model.vision_tower.preprocessor.size
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_sequence_logprobs_are_minus_the_sft_loss_times_the_token_count(tiny, tokenizer):
    model = make_model(tiny).eval()
    with torch.no_grad():
        for question, answer in [("What colour is it?", "a red square"), ("Shape?", "circle")]:
            ids, labels = labelled(model, tokenizer, question, answer)
            ids, labels, image = ids[None], labels[None], pixels(model, 1)
            out = model(input_ids=ids, pixel_values=image, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            hidden = model.decoder(inputs_embeds=model.embed(ids, image)).last_hidden_state
            logps, counts = sequence_logprobs(model.lm_head, hidden, labels)
            assert int(counts[0]) == n and n >= 2
            torch.testing.assert_close(logps[0], -out.loss * n, rtol=1e-5, atol=1e-4)


def pair_batch(model, tokenizer, pairs):
    """A PreferenceCollator batch of (question, chosen, rejected) pairs, one image each."""
    from dataset.collate import PreferenceCollator

    images = pixels(model, len(pairs))
    items = []
    for i, (question, chosen, rejected) in enumerate(pairs):
        chosen_ids, chosen_labels = labelled(model, tokenizer, question, chosen)
        rejected_ids, rejected_labels = labelled(model, tokenizer, question, rejected)
        items.append({"chosen_input_ids": chosen_ids, "chosen_labels": chosen_labels, "rejected_input_ids": rejected_ids,
                      "rejected_labels": rejected_labels, "pixel_values": images[i]})
    return PreferenceCollator(tokenizer.pad_token_id)(items)


def dpo_trainer(model, tmp_path, settings=DPOSettings()):
    from transformers import TrainingArguments

    from config import TrainSettings
    from training.dpo import DPOTrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    return DPOTrainer(model=model, args=args, settings=TrainSettings(), group_by_length=False, dpo=settings)


def test_one_tower_pass_per_pair_no_full_vocab_logits_and_ln2_at_step_zero(tiny, tokenizer, tmp_path):
    model = make_model(tiny, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                       finetune="lora")
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_A" in name:
            torch.nn.init.normal_(param, std=0.5)  # A random, B = 0: the adapter adds exactly nothing
    batch = pair_batch(model, tokenizer, [("What colour?", "red", "it is probably a kind of red"),
                                          ("How many?", "2", "3"), ("Shape?", "circle", "square")])
    tower_calls, head_inputs = [], []
    model.vision_tower.register_forward_hook(lambda m, i, o: tower_calls.append(i[0].shape[0]))
    model.lm_head.register_forward_hook(lambda m, i, o: head_inputs.append(tuple(i[0].shape)))
    trainer = dpo_trainer(model, tmp_path)
    model.train()
    loss = trainer.compute_loss(model, batch)
    assert tower_calls == [3]  # one pass over the 3 images, for 6 rows and the reference pass
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    # Only supervised positions reach the head (policy and reference: prefix, then answers).
    assert all(len(shape) == 2 and shape[1] == model.config.text_hidden_size for shape in head_inputs)
    assert sum(shape[0] for shape in head_inputs) == 2 * supervised
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)  # policy == reference exactly
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def conversation(model, tokenizer, turns):
    """input_ids and labels of a conversation given as (question, answer) turns, the image first."""
    from qwen import PromptRenderer, record_messages

    messages = []
    for k, (question, answer) in enumerate(turns):
        messages += [{"role": "user", "content": ("<|extra_0|>\n" if k == 0 else "") + question},
                     {"role": "assistant", "content": answer}]
    rendered = PromptRenderer(tokenizer, model.config.num_image_tokens).render(record_messages(messages, system_prompt=""))
    return torch.tensor(rendered.input_ids), torch.tensor(rendered.labels)


def test_pair_logprobs_share_the_prompt_and_equal_whole_rows(tiny, tokenizer):
    """The prompt runs once per pair (answers attend to its KV cache); the log-probabilities and
    their gradients equal those of each whole row through the model's own forward and loss."""
    from dataset.collate import PreferenceCollator
    from training.dpo import pair_logprobs

    model = make_model(tiny, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                       finetune="lora")
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.3)
    model.train()
    pairs = [  # answers of different lengths, one a prefix of the other, a multi-turn pair, prompts of different lengths
        ([("What colour is the big shape on the left?", "red")], [("What colour is the big shape on the left?", "a red square, I think")]),
        ([("Shape?", "circle")], [("Shape?", "circle or square")]),
        ([("How many?", "2"), ("And red ones?", "1")], [("How many?", "2"), ("And red ones?", "none")]),
    ]
    images = pixels(model, len(pairs), seed=3)
    items = []
    for i, (chosen, rejected) in enumerate(pairs):
        (ci, cl), (ri, rl) = conversation(model, tokenizer, chosen), conversation(model, tokenizer, rejected)
        items.append({"chosen_input_ids": ci, "chosen_labels": cl, "rejected_input_ids": ri, "rejected_labels": rl,
                      "pixel_values": images[i]})
    batch = PreferenceCollator(tokenizer.pad_token_id)(items)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    decoder_lengths = []
    hook = model.decoder.register_forward_hook(lambda m, a, kw, out: decoder_lengths.append(kw["inputs_embeds"].shape),
                                               with_kwargs=True)
    features = model.image_features(batch["pixel_values"])
    logps, counts = pair_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], features)
    hook.remove()
    (prefix_shape, suffix_shape) = decoder_lengths
    assert prefix_shape[0] == 3 and suffix_shape[0] == 6  # three prompts, six answers
    assert suffix_shape[1] < 20 < prefix_shape[1]  # the answers alone, not the image and question again
    shared_grads = torch.autograd.grad(logps.sum(), lora)

    expected, expected_counts = [], []
    for k in range(6):
        i, side = k % 3, "chosen" if k < 3 else "rejected"
        ids, labels = items[i][f"{side}_input_ids"][None], items[i][f"{side}_labels"][None]
        n = int((labels[:, 1:] != -100).sum())
        out = model(input_ids=ids, pixel_values=items[i]["pixel_values"][None], labels=labels)
        expected.append(-out.loss * n)
        expected_counts.append(n)
    expected = torch.stack(expected)
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-4)
    assert counts.tolist() == expected_counts
    for got, want in zip(shared_grads, torch.autograd.grad(expected.sum(), lora)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# -- preference data -----------------------------------------------------------------------------


def test_preference_records_in_three_layouts_and_their_bad_input(tmp_path):
    from commands import process_image
    images = tmp_path / "images"
    images.mkdir()
    from tests.conftest import write_image

    for name in ("a.png", "b.png"):
        write_image(images / name, (32, 32))
    lines = [
        {"id": 1, "messages": [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}],
         "rejected_response": "blue", "images": ["a.png"]},
        {"id": 2, "messages": [{"role": "user", "content": "<image>Count?"}, {"role": "assistant", "content": "2"}],
         "rejected_messages": [{"role": "user", "content": "<image>Count?"}, {"role": "assistant", "content": "two, I think"}],
         "images": ["b.png"], "rejected_images": ["b.png"]},
        {"id": 3, "image": "a.png", "question": "Shape?", "chosen": "circle", "rejected": "a round thing"},
        {"id": 4, "image": "a.png", "question": "Same?", "chosen": "yes", "rejected": "yes"},
        {"id": 5, "messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "x"}], "images": ["a.png"]},
        {"id": 6, "messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "x"}],
         "rejected_messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "y"}],
         "images": ["a.png"], "rejected_images": ["b.png"]},
        # rejected_response with rejected_images naming another image: the same rule
        {"id": 7, "messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "x"}],
         "rejected_response": "y", "images": ["a.png"], "rejected_images": ["b.png"]},
    ]
    raw = tmp_path / "pairs.jsonl"
    raw.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  sources:\n    - type: preference\n      annotations: {raw}\n      image_dir: {images}\n"
                      f"  output_dir: {tmp_path / 'out'}\n")
    assert process_image.main(["--config", str(config)]) == 0
    records = json.loads((tmp_path / "out" / "qa.json").read_text())
    assert [(r["id"], r["messages"][-1]["content"], r["rejected"]) for r in records] == [
        ("preference/1", "red", "blue"), ("preference/2", "2", "two, I think"), ("preference/3", "circle", "a round thing")]
    assert records[2]["messages"][0]["content"] == "<|extra_0|>\nShape?"
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["total"]["skipped"] == {"same_answers": 1, "missing_field": 1, "images_differ": 2}


# -- train.py ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preference_data(tiny, merged, tmp_path_factory):  # noqa: F811
    """Pairs from the demo data: chosen = the short correct answer, rejected = a long-winded one."""
    base = tmp_path_factory.mktemp("pairs")
    records = json.loads(merged["eval"].read_text()) + json.loads(merged["train"].read_text())
    images = json.loads((merged["train"].parent / "images.json").read_text())
    eval_images = json.loads((merged["eval"].parent / "images.json").read_text())
    out = {}
    for split, chunk, table, folder in (("train", records[40:200], images, merged["train"].parent),
                                        ("eval", records[:40], eval_images, merged["eval"].parent)):
        raw = base / f"{split}.jsonl"
        with raw.open("w") as f:
            for r in chunk:
                user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
                path = folder / table[str(r["image_id"])]["path"]
                f.write(json.dumps({"messages": [{"role": "user", "content": user.replace("<|extra_0|>", "<image>")},
                                                 {"role": "assistant", "content": answer}],
                                    "rejected_response": f"Looking at the image carefully, I would say that it is {answer}.",
                                    "images": [str(path.resolve())]}) + "\n")
        subprocess.run([sys.executable, "process_image.py", "--config", "configs/demo.yaml",
                        "--set", f"data.sources=[{{type: preference, annotations: {raw}}}]",
                        "--set", f"data.output_dir={base / split}"], cwd=ROOT, check=True, capture_output=True)
        out[split] = base / split / "qa.json"
    return out


@pytest.fixture(scope="module")
def sft_checkpoint(tiny, merged, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("sft") / "run"
    result = run_train(overrides(tiny, merged, out, "train.max_steps=10", "train.save_steps=10"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def dpo_args(tiny, merged, preference_data, sft, out, *extra):  # noqa: F811
    return overrides(tiny, merged, out, "train.stage=dpo", f"train.init_from={sft}",
                     f"data.train_file={preference_data['train']}", f"data.eval_file={preference_data['eval']}",
                     "train.eval_vqa=false", "train.eval_steps=12", "train.max_steps=24", "train.save_steps=12",
                     "train.learning_rate=2e-2", "train.dpo.beta=0.5", *extra)


def progress(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]


def test_dpo_run_learns_the_preference_and_resumes_exactly(tiny, merged, preference_data, sft_checkpoint, tmp_path):  # noqa: F811
    from model import VQAModel

    out = tmp_path / "dpo"
    result = run_train(dpo_args(tiny, merged, preference_data, sft_checkpoint, out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = progress(out)
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(train_rows[0])
    evals = [r["eval_rewards/accuracies"] for r in rows if "eval_rewards/accuracies" in r]
    assert len(evals) == 2 and evals[-1] > 0.5, rows  # held-out pairs: above chance
    keys = set(trained_state(out))
    assert keys and all("lora_" in k or k.startswith("multi_modal_projector.") for k in keys)
    sft = VQAModel.from_pretrained(sft_checkpoint)
    dpo = VQAModel.from_pretrained(out)  # rebuilds the sft model from base_checkpoint, then its adapter
    assert json.loads((out / "config.json").read_text())["base_checkpoint"].startswith(str(sft_checkpoint.resolve()))
    torch.testing.assert_close(dpo.multi_modal_projector.linear_1.weight, sft.multi_modal_projector.linear_1.weight,
                               rtol=0, atol=0)  # the projector stayed frozen

    # Stopped at step 12 and resumed: the same weights as the uninterrupted run.
    split = tmp_path / "split"
    first = run_train(dpo_args(tiny, merged, preference_data, sft_checkpoint, split, "train.stop_at_step=12"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_train(dpo_args(tiny, merged, preference_data, sft_checkpoint, split))
    assert second.returncode == 0 and "resuming from" in second.stdout, second.stderr[-3000:]
    whole, resumed = trained_state(out), trained_state(split)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-6)
    check_lineage(tiny, merged, preference_data, sft_checkpoint, out, split, tmp_path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_lineage(tiny, merged, preference_data, sft, dpo, split, tmp_path):  # noqa: F811
    """run.json of the dpo runs, and train.py --lineage back through the sft run to the base models."""
    from commands import export, train
    from model.checkpoints import files_fingerprint, model_files

    record = json.loads((dpo / "run.json").read_text())
    (session,) = record["sessions"]
    assert session["status"] == "finished" and session["steps"] == {"start": 0, "end": 24}
    assert session["config"]["train"]["stage"] == "dpo" and session["config"]["train"]["dpo"]["beta"] == 0.5
    assert session["data"]["train"]["sha256"] == sha256(preference_data["train"])
    assert session["data"]["train images"]["sha256"] == sha256(preference_data["train"].parent / "images.json")
    assert session["data"]["eval"]["sha256"] == sha256(preference_data["eval"])
    assert session["bases"]["language_model"]["fingerprint"] == files_fingerprint(model_files(tiny["tiny-qwen2"]))
    assert session["model_fingerprint"] == files_fingerprint(model_files(dpo))
    assert set(session["checkpoints"]) == {"checkpoint-12", "checkpoint-24"}
    assert session["checkpoints"]["checkpoint-12"] == files_fingerprint(model_files(dpo / "checkpoint-12"))
    assert "eval_rewards/accuracies" in session["metrics"] and "train_loss" in session["metrics"]
    code = session["code"]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert code["commit"] == (git.stdout.strip() if git.returncode == 0 else "unknown")
    # the parent: the sft run, by fingerprint, with its own record (its data: the sft training file)
    parent = session["parent"]
    assert parent["fingerprint"] == files_fingerprint(model_files(sft)) == \
        parent["record"]["sessions"][-1]["model_fingerprint"]
    assert parent["record"]["sessions"][0]["data"]["train"]["sha256"] == sha256(merged["train"])
    # the split run: two sessions, the first kept as it was written when it stopped
    sessions = json.loads((split / "run.json").read_text())["sessions"]
    assert [s["status"].split(" ")[0] for s in sessions] == ["stopped", "finished"]
    assert sessions[1]["resumed_from"].endswith("checkpoint-12") and sessions[1]["steps"] == {"start": 12, "end": 24}
    snapshot = json.loads((split / "checkpoint-12" / "run.json").read_text())["sessions"]  # as it was at that save
    assert len(snapshot) == 1 and snapshot[0]["status"] == "running" and snapshot[0]["started"] == sessions[0]["started"]
    assert snapshot[0]["checkpoints"] == sessions[0]["checkpoints"] == {
        "checkpoint-12": files_fingerprint(model_files(split / "checkpoint-12"))}
    assert json.loads((split / "checkpoint-24" / "run.json").read_text())["sessions"][0] == sessions[0]  # kept as it was

    # --lineage of an export of the dpo model: export -> dpo run -> sft run -> base models
    exported = tmp_path / "export"
    assert export.main(["--checkpoint", str(dpo), "--output", str(exported), "--dtype", "float32"]) == 0
    lineage_json = json.loads((exported / "lineage.json").read_text())
    assert lineage_json["source"]["fingerprint"] == session["model_fingerprint"] and lineage_json["format"] == "llava"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert train.main(["--lineage", str(exported)]) == 0
    text = buffer.getvalue()
    print(text)  # shown with -s: what a user reads
    lines = text.splitlines()
    assert lines[0].startswith(str(exported))
    assert any("exported as llava" in line for line in lines)
    assert "stage dpo, finetune lora, steps 0 -> 24" in text and "stage sft, finetune lora, steps 0 -> 10" in text
    assert f"data train: {preference_data['train'].resolve()} sha256 {sha256(preference_data['train'])[:12]}" in text
    assert f"data train: {merged['train'].resolve()} sha256 {sha256(merged['train'])[:12]}" in text
    assert f"base language_model: {tiny['tiny-qwen2'].resolve()} fingerprint" in text
    assert "train.dpo.beta=0.5" in text and "(started from the base models)" in text
    assert text.count("still there, unchanged") == 2 and "the model is one this run saved" in text
    assert text.index("stage dpo") < text.index("stage sft")  # child first, then its parent, indented deeper
    sft_line = next(line for line in lines if "stage sft" in line)
    dpo_line = next(line for line in lines if "stage dpo" in line)
    assert len(sft_line) - len(sft_line.lstrip()) > len(dpo_line) - len(dpo_line.lstrip())


def test_dpo_full_finetune_with_a_precomputed_reference(tiny, merged, preference_data, sft_checkpoint, tmp_path):  # noqa: F811
    # With activation checkpointing, too: training then runs whole rows (a layer recomputed in the
    # backward pass cannot keep a KV cache), the reference pass shares prompts; both agree.
    out = tmp_path / "full"
    result = run_train(dpo_args(tiny, merged, preference_data, sft_checkpoint, out, "train.finetune=full",
                                "train.dpo.precompute_reference=true", "train.max_steps=4", "train.eval_steps=4",
                                "train.save_steps=4", "train.learning_rate=1e-3", "train.activation_checkpointing=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert progress(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_dpo_trains_under_zero2_on_two_cpu_processes(tiny, merged, preference_data, sft_checkpoint, tmp_path):  # noqa: F811
    from tests.conftest import free_port

    out = tmp_path / "zero2"
    args = dpo_args(tiny, merged, preference_data, sft_checkpoint, out, "train.deepspeed=configs/zero2.json",
                    "train.max_steps=4", "train.save_steps=4", "train.eval_steps=4", "train.bf16=false")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), "train.py", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    curve = losses(out)
    assert len(curve) == 4 and curve[0] == pytest.approx(math.log(2), abs=1e-6)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained_state(out).items())


def test_dpo_refusals_before_any_model_loads(tiny, merged, preference_data, tmp_path):  # noqa: F811
    from config import load_config
    from errors import UserError
    from training.checks import validate

    # Through the command line: exit status 2, one line, no traceback.
    args = dpo_args(tiny, merged, preference_data, tmp_path / "sft-missing", tmp_path / "out", "train.init_from=null")
    result = run_train(args, timeout=120)
    assert result.returncode == 2 and "train.stage dpo needs train.init_from" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr

    # The other refusals come from the same check, before anything is loaded: in-process.
    for extra, message in [
        ("train.finetune=full", "needs train.dpo.precompute_reference: true"),
        ("train.dpo.beta=0", "train.dpo.beta must be > 0"),
        ("train.dpo.label_smoothing=0.5", "train.dpo.label_smoothing must be in [0, 0.5)"),
        ("train.dpo.sft_weight=-1", "train.dpo.sft_weight must be >= 0"),
        ("model.quantize=nf4", "folds the sft adapter"),
        ("train.lora.init=pissa", "the adapter off is no longer the sft model"),
    ]:
        args = dpo_args(tiny, merged, preference_data, tmp_path, tmp_path / "out", extra)
        sets = [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]
        with pytest.raises(UserError, match=re.escape(message)):
            validate(load_config("configs/demo.yaml", sets))

"""Preference alignment on our own model and Trainer: DPO, IPO and hinge losses over answer pairs.

Why not trl's DPOTrainer: on this model it needed workarounds, scored every position through the
151,936-row vocabulary head (~12x slower on a CPU) and parsed special tokens in user text. Here a
batch of B pairs is 2B rows sharing B images: the tower and projector run once per pair, the
sequence log-probability of an answer is summed over its supervised tokens only, and logits exist
only at those positions (``[supervised tokens, vocab]``, never ``[batch, seq, vocab]``).

The reference model is never a second copy: with LoRA it is the same model with the adapter off
(the run starts from an sft checkpoint whose own adapter was folded into the weights, so adapter
off is exactly the starting model, and the projector stays frozen); with a full fine-tune, or when
asked, the reference log-probabilities are computed once before training
(:func:`precompute_reference`) and travel with the data set.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
import torch.nn.functional as F

from config import DPOSettings
from errors import UserError
from model.splice import splice_image_features
from qwen.prompt import IGNORE_INDEX
from training.stages import Stage
from training.trainer import VQATrainer


def target_logprobs(lm_head, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the supervised ``targets`` (``hidden[:, t]``
    predicts ``targets[:, t]``), and how many there are. Only those positions go through
    ``lm_head``: logits are ``[supervised tokens, vocab]``."""
    mask = targets != IGNORE_INDEX
    logits = lm_head(hidden[mask]).float()
    token_logps = logits.log_softmax(-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    sums = torch.zeros(targets.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, rows, token_logps), mask.sum(dim=1)


def sequence_logprobs(lm_head, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the supervised tokens, and how many there are.

    ``hidden`` ``[rows, seq, H]``; position t predicts ``labels[:, t + 1]``."""
    return target_logprobs(lm_head, hidden[:, :-1], labels[:, 1:])


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: how many leading tokens the chosen row (``input_ids[:B]``) and the rejected row
    (``input_ids[B:]``) of each pair have in common (system turn, image, question, earlier turns),
    kept below both lengths so that each row has at least one token of its own."""
    pairs = input_ids.shape[0] // 2
    lengths = attention_mask.sum(dim=1)
    short = torch.minimum(lengths[:pairs], lengths[pairs:])
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    differ = (input_ids[:pairs] != input_ids[pairs:]) | (positions >= short[:, None])
    first = torch.where(differ.any(dim=1), differ.int().argmax(dim=1), short)
    return torch.minimum(first, short - 1).clamp(min=1)


def _decoder_checkpointed(model) -> bool:
    return model.training and any(getattr(layer, "gradient_checkpointing", False) for layer in model.decoder.layers)


def pair_logprobs(model, input_ids, attention_mask, labels, features) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probabilities of 2B rows (chosen, then rejected) whose B images were already
    projected (``features`` ``[B, n, H]``: computed once, used by both halves).

    Both rows of a pair share their prompt (and image), so the language model runs that prefix
    once per pair and each answer attends to its KV cache: the decoder sees B prefixes plus 2B
    short suffixes instead of 2B whole sequences. The result equals running the 2B rows in full
    (tested). Activation checkpointing recomputes layers without a cache, so with it on the rows
    run in full."""
    image_token = model.config.image_token_id
    prefix = shared_prefix(input_ids, attention_mask)
    pairs = input_ids.shape[0] // 2
    width = int(prefix.max())
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    suffix_has_image = ((input_ids == image_token) & (positions >= prefix.repeat(2)[:, None])).any()
    if _decoder_checkpointed(model) or bool(suffix_has_image):
        embeds = splice_image_features(model.get_input_embeddings()(input_ids), input_ids, image_token,
                                       torch.cat([features, features]))
        hidden = model.decoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return sequence_logprobs(model.lm_head, hidden, labels)

    from transformers import DynamicCache

    # The B prefixes (the chosen rows, cut at their shared length).
    prefix_ids = input_ids[:pairs, :width]
    prefix_mask = (positions[:width] < prefix[:, None]).long()
    embeds = splice_image_features(model.get_input_embeddings()(prefix_ids), prefix_ids, image_token, features)
    cache = DynamicCache(config=model.text_config)
    prefix_hidden = model.decoder(inputs_embeds=embeds, attention_mask=prefix_mask, past_key_values=cache,
                                  use_cache=True).last_hidden_state
    prefix_labels = labels[:pairs, :width].masked_fill(prefix_mask == 0, IGNORE_INDEX)
    prefix_logps, _ = sequence_logprobs(model.lm_head, prefix_hidden, prefix_labels)  # shared by both answers

    # The 2B suffixes, interleaved (chosen 0, rejected 0, chosen 1, ...) to match the cache's
    # repeat_interleave, each continuing its prefix's positions.
    order = torch.stack([torch.arange(pairs), torch.arange(pairs) + pairs], dim=1).flatten().to(input_ids.device)
    start = prefix.repeat_interleave(2)
    length = attention_mask.sum(dim=1)[order] - start
    steps = torch.arange(int(length.max()), device=input_ids.device)
    valid = steps < length[:, None]
    index = (start[:, None] + steps).clamp(max=input_ids.shape[1] - 1)
    suffix_ids = input_ids[order].gather(1, index).masked_fill(~valid, 0)
    suffix_labels = labels[order].gather(1, index).masked_fill(~valid, IGNORE_INDEX)
    cache.batch_repeat_interleave(2)
    suffix_hidden = model.decoder(
        inputs_embeds=model.get_input_embeddings()(suffix_ids),
        attention_mask=torch.cat([prefix_mask.repeat_interleave(2, dim=0), valid.long()], dim=1),
        position_ids=start[:, None] + steps, past_key_values=cache, use_cache=True,
    ).last_hidden_state
    # Suffix token k is predicted by the position before it: the prefix's last one for k = 0.
    last_prefix = prefix_hidden[torch.arange(pairs, device=input_ids.device), prefix - 1].repeat_interleave(2, dim=0)
    predictors = torch.cat([last_prefix[:, None], suffix_hidden[:, :-1]], dim=1)
    suffix_logps, _ = target_logprobs(model.lm_head, predictors, suffix_labels)
    logps = (suffix_logps + prefix_logps.repeat_interleave(2))[torch.argsort(order)]
    return logps, (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, settings: DPOSettings):
    """Per-pair losses and the implicit rewards ``beta * (policy - reference)`` of both answers.

    With ``h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)``:
    sigmoid (DPO) ``-(1 - eps) log sigma(beta h) - eps log sigma(-beta h)``; ipo ``(h - 1 / (2 beta))^2``;
    hinge ``max(0, 1 - beta h)``."""
    beta = settings.beta
    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if settings.loss == "sigmoid":
        eps = settings.label_smoothing
        losses = -F.logsigmoid(beta * h) * (1 - eps) - F.logsigmoid(-beta * h) * eps
    elif settings.loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif settings.loss == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss {settings.loss!r}")
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def adapter_off(model):
    """The reference: the language model with its LoRA adapter disabled."""
    disable = getattr(model.language_model, "disable_adapter", None)
    if disable is None:
        raise ValueError("the reference needs a LoRA adapter to disable, or train.dpo.precompute_reference")
    return disable()


@torch.no_grad()
def precompute_reference(model, dataset, collator, batch_size: int, autocast_dtype=None) -> torch.Tensor:
    """``[pairs, 2]`` log-probabilities of (chosen, rejected) under ``model`` as it is now (the
    starting model), in one pass over ``dataset``; stored on it as ``dataset.reference``."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    out = []
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    dataset.reference = None
    for start in tqdm(range(0, len(dataset), batch_size), desc="reference log-probs", leave=False):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            features = model.image_features(batch["pixel_values"])
            logps, _ = pair_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], features)
        pairs = logps.shape[0] // 2
        out.append(torch.stack([logps[:pairs], logps[pairs:]], dim=1).float().cpu())
    model.train(was_training)
    dataset.reference = torch.cat(out)
    return dataset.reference


class DPOTrainer(VQATrainer):
    """The VQA Trainer with a preference loss; logs rewards/chosen, rewards/rejected,
    rewards/margins and rewards/accuracies (``eval_`` prefixed at evaluation)."""

    def __init__(self, *args, dpo: DPOSettings, **kwargs):
        self.dpo = dpo
        self._stored: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False  # a mean over pairs: the Trainer divides by accumulation steps
        self.label_names = ["labels"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        vqa = self.model  # the VQAModel (DeepSpeed's engine wraps it; its hooks fire on submodule calls)
        features = vqa.image_features(inputs["pixel_values"])
        ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        logps, counts = pair_logprobs(vqa, ids, mask, labels, features)
        pairs = logps.shape[0] // 2
        policy_chosen, policy_rejected = logps[:pairs], logps[pairs:]
        if "reference_logps" in inputs:
            reference = inputs["reference_logps"].to(logps.dtype)
            reference_chosen, reference_rejected = reference[:, 0], reference[:, 1]
        else:
            with torch.no_grad(), adapter_off(vqa):
                ref, _ = pair_logprobs(vqa, ids, mask, labels, features.detach())
            reference_chosen, reference_rejected = ref[:pairs], ref[pairs:]
        losses, chosen_rewards, rejected_rewards = preference_loss(
            policy_chosen, policy_rejected, reference_chosen, reference_rejected, self.dpo)
        loss = losses.mean()
        if self.dpo.sft_weight:
            loss = loss + self.dpo.sft_weight * (-policy_chosen / counts[:pairs].clamp(min=1)).mean()
        stored = self._stored["train" if vqa.training else "eval"]
        stored["rewards/chosen"].append(chosen_rewards.mean().item())
        stored["rewards/rejected"].append(rejected_rewards.mean().item())
        stored["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        stored["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        stored["logps/chosen"].append(policy_chosen.detach().mean().item())
        stored["logps/rejected"].append(policy_rejected.detach().mean().item())
        return (loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means of the reward metrics gathered since the last log (as trl does)."""
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for key, values in self._stored[split].items():
            if values:
                logs[prefix + key] = round(sum(values) / len(values), 6)
        self._stored[split].clear()
        super().log(logs, start_time)


class DPOStage(Stage):
    """``train.stage: dpo``: preference pairs (``dataset.preference``), the losses above, and a
    reference that is never a second copy of the model."""

    name = "dpo"

    def check(self, cfg) -> None:
        """A dpo run starts from an sft model and needs a reference it can compute."""
        t = cfg.train
        if not t.init_from:
            raise UserError("train.stage dpo needs train.init_from: the sft checkpoint (or run directory) to align")
        if t.finetune == "full" and not t.dpo.precompute_reference:
            raise UserError("train.stage dpo with train.finetune full needs train.dpo.precompute_reference: true "
                            "(the reference is the starting model; without an adapter to switch off it is "
                            "computed once before training instead of kept as a second copy)")
        if t.finetune == "lora" and t.lora.init == "pissa" and not t.dpo.precompute_reference:
            raise UserError("train.lora.init pissa moves part of each weight into the adapter, so the adapter off is "
                            "no longer the sft model the reference must be; set train.dpo.precompute_reference: true "
                            "(the reference computed once from the starting model) or train.lora.init: default")
        d = t.dpo
        if not d.beta > 0:
            raise UserError(f"train.dpo.beta must be > 0, got {d.beta}")
        if not 0 <= d.label_smoothing < 0.5:
            raise UserError(f"train.dpo.label_smoothing must be in [0, 0.5), got {d.label_smoothing}")
        if d.sft_weight < 0:
            raise UserError(f"train.dpo.sft_weight must be >= 0, got {d.sft_weight}")
        if t.train_vision_tower:
            raise UserError("train.train_vision_tower: the dpo stage keeps the tower and projector frozen")

    def quantize_refusal(self, cfg) -> str | None:
        return "train.stage dpo folds the sft adapter into the language model, which 4-bit weights cannot hold"

    def build_model(self, cfg):
        """The sft checkpoint ``train.init_from`` with its adapter folded into the language model
        and, with LoRA, a fresh adapter on top (B = 0: at step 0 the policy is the reference, and
        the adapter off is the sft model). The checkpoint records that base (``base_checkpoint``) so
        that loading a dpo checkpoint rebuilds it. The projector (and tower) stay frozen."""
        import os

        from model import VQAModel
        from model.checkpoints import resolve_checkpoint
        from training.build import lora_settings

        t = cfg.train
        start = resolve_checkpoint(t.init_from)
        model = VQAModel.from_pretrained(start)
        model.fold_adapter()
        if t.finetune == "lora":
            model.configure_training("lora", lora_settings(t))
            model.config.base_checkpoint = os.path.abspath(start)
        else:
            model.configure_training("full", train_embeddings=t.train_embeddings)
        model.multi_modal_projector.requires_grad_(False)
        return model

    def dataset_class(self):
        from dataset.preference import PreferenceDataset

        return PreferenceDataset

    def collator(self, tokenizer):
        from dataset.collate import PreferenceCollator

        return PreferenceCollator(tokenizer.pad_token_id)

    def trainer(self, cfg, **kwargs):
        t = cfg.train
        if t.dpo.precompute_reference:
            kwargs["model"].to(kwargs["args"].device)  # the Trainer would move it there anyway; the pass runs there too
            dtype = torch.bfloat16 if t.bf16 else None
            for dataset in (kwargs["train_dataset"], kwargs["eval_dataset"]):
                if dataset is not None:
                    precompute_reference(kwargs["model"], dataset, kwargs["data_collator"], t.eval_batch_size, dtype)
        return DPOTrainer(**kwargs, dpo=t.dpo)

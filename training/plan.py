"""Will it fit? The peak GPU memory of a configured training run, estimated from config files only.

``train.py --plan`` reads the language model's and the vision tower's ``config.json`` (a local folder
or the hub cache; no weights), counts their parameters on the meta device, and adds up what one
GPU holds at each moment of a training step. When the total does not fit the card, it tries the
usual changes and lists those that fit, cheapest first, each as the ``--set`` overrides to use.

Why a model of the step and not a rule of thumb: for these runs the memory is not "weights x 16".
A 151,936-row vocabulary makes the logits at the supervised positions a large, batch-sized term;
a full fine-tune keeps an fp32 residual stream; autocast keeps bf16 copies of fp32 weights; and the
peak moves between the start of the backward pass (all activations plus the logits' gradients)
and its end (all gradients). So the estimate is the largest of the sums at six moments (phases).

The formula, in bytes, for one GPU (T = rows x sequence tokens of one micro-batch, n = rows x
supervised tokens, V = vocabulary, L = decoder layers, d / i / q / kv = hidden, intermediate,
query and key-value widths of the LM):

    base        = frozen weights (model.dtype: 2 or 4 B/param; NF4: 0.517 B per quantized linear
                  parameter, 0.5625 without double quantization, the rest in the compute dtype)
                + trainable weights (4 B/param, fp32 master) + AdamW (8 B/param)
                + gradients of earlier micro-batches (4 B/param, only with accumulation)
    tower       = base + the frozen tower's forward, one layer at a time:
                  rows x positions x (4 h + 2 i_v) x dtype bytes
    forward end = base + bf16 weight copies + activations + 10 n V   (bf16 logits, their fp32 copy,
                  the log-softmax output)
    backward    = base + bf16 copies saved for backward + activations + 12 n V   (log-softmax output,
                  its gradient and the logits' gradient, fp32)
    recompute   = base + gradients + checkpointed layer inputs + one layer's activations (with
                  activation checkpointing: the first and the last layer recomputed)
    end         = base + all gradients (4 B/param) + the tied embedding's gradient while it is
                  added to the head's (4 V d; 8 V d in fp32, where the sum is a new tensor)
    peak        = max of the above;  total = peak + CUDA context (0.5 GiB) + 5% allocator slack

    activations = L x T x a    without checkpointing,     a = per token per layer, below
                = L x T x 4d   with it (the fp32 residual a full fine-tune keeps; 2d for a bf16 one)
                + T x 8d (final norm) + image tokens x (2 h + 6 d) (projector)

``a`` comes from counting the tensors autograd saves in one Qwen2/Qwen3 decoder layer under bf16
autocast (``saved_tensors_hooks``, deduplicated by storage, weight copies apart), eager and
``torch.compile``d, for seven layer shapes on the CPU; every count fitted ``cd d + ci i + ckv kv +
cq q`` exactly (zero residual), plus 4 B per head (the attention's log-sum-exp) and 2 r B per LoRA
module. :data:`LAYER_BYTES` holds the coefficients. Full fine-tune, compiled: ``10d + 6i + 4kv + 4q``
= 74.5 KB per token per layer at Qwen2.5-1.5B; the two H100 rows without checkpointing
(bench/RESULTS.md) differ by 2.05 GiB per sample, 74.6 KB per token per layer once the logits are
taken out: the count and the measurement agree.

What was calibrated against the H100 table of bench/RESULTS.md, and what was not: none of the
constants was fitted to its peaks (which phases to compare was decided with them in view); the
12 B per logit and the layer counts above are derived, and the nine measured rows are then within
3% (``tests/test_plan.py``; the table with the estimates is in bench/RESULTS.md, "Memory planner
vs measured peaks"). Not measured on a GPU:
eager runs without checkpointing, DeepSpeed (the ZeRO paper's accounting: 2 B/param bf16 weights,
2 B/param bf16 gradients, 12 B/param fp32 master + Adam, sharded per stage), QLoRA activations (the
LoRA counts), DoRA's per-step weight norms, DPO (estimated as an SFT step of 2 x rows), the
context and allocator overhead (the bench recorded ``max_memory_allocated``, which excludes both).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from config import Config
from errors import UserError

GIB = 2**30
# The bench's sample (bench/gpu_train.py): 728 image tokens + 65 text + 128 answer tokens = 921.
DEFAULT_TEXT_TOKENS = 193
DEFAULT_ANSWER_TOKENS = 128
# No visible GPU: plan for a 24 GiB card (the RTX 3090/4090 class) unless told otherwise.
DEFAULT_GPU_GIB = 24.0
# Not measured here (the bench recorded torch.cuda.max_memory_allocated): the CUDA context with
# cuBLAS workspaces (about 0.5 GiB with torch 2.x's lazy module loading) and the caching
# allocator's fragmentation, taken as 5% of the allocated peak.
CUDA_CONTEXT_GIB = 0.5
ALLOCATOR_SLACK = 0.05
# bench/RESULTS.md, "QLoRA memory": bytes per 4-bit quantized parameter (0.5 for the values, the
# rest block scales; double quantization quantizes the scales too).
NF4_BYTES = {True: 0.517, False: 0.5625}
# Bytes saved for backward per token per decoder layer: (d, i, kv, q) coefficients and the extra
# q/k width coefficient of Qwen3's per-head norms. Keys: (kind, compiled). Counted on the CPU
# (module docstring); the ones marked "est" were not counted and copy their nearest relative.
LAYER_BYTES: dict[tuple[str, bool], tuple[tuple[int, int, int, int], int]] = {
    ("full", False): ((26, 8, 4, 4), 6),        # fp32 master weights under bf16 autocast (fp32 residual)
    ("full", True): ((10, 6, 4, 4), 2),
    ("frozen", False): ((8, 6, 4, 4), 4),       # frozen bf16 LM (pretrain: gradients flow through it)
    ("frozen", True): ((4, 4, 4, 4), 2),
    ("lora", False): ((38, 12, 4, 10), 4),      # LoRA with dropout (each adapter keeps its dropped input)
    ("lora", True): ((19, 7, 4, 7), 2),
    ("lora_nodrop", False): ((18, 8, 4, 6), 4),  # qk-norm extra: est
    ("lora_nodrop", True): ((8, 6, 4, 6), 2),    # qk-norm extra: est
    ("bf16", False): ((16, 8, 4, 4), 4),        # bf16 trainable weights, no autocast (DeepSpeed bf16); qk: est
    ("bf16", True): ((8, 6, 4, 4), 2),          # qk: est
    ("full32", False): ((24, 16, 8, 8), 8),     # fp32, no autocast (train.bf16 false); qk: est
    ("full32", True): ((16, 12, 8, 8), 4),      # qk: est
    ("frozen32", False): ((8, 12, 8, 8), 8),    # qk: est
    ("frozen32", True): ((8, 8, 8, 8), 4),      # qk: est
    ("lora32", False): ((48, 20, 8, 16), 8),    # qk: est
    ("lora32", True): ((48, 20, 8, 16), 8),     # est: the eager count
}


# -- shapes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMShape:
    """What the estimate needs of the language model, read from its config on the meta device."""

    name: str
    params: int                  # unique parameters (a tied head counted once)
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    q_width: int                 # heads x head_dim
    kv_width: int                # key-value heads x head_dim
    tied: bool                   # the head is the embedding matrix
    qk_norm: bool                # Qwen3's per-head q/k norms
    quantizable: int             # parameters of the decoder's linear layers (what NF4 quantizes)
    largest_layer: int           # parameters of one decoder layer (ZeRO-3 gathers one at a time)
    linears: tuple[tuple[str, int, int], ...] = field(repr=False)  # (name, in, out) of every nn.Linear

    @property
    def embedding(self) -> int:
        return self.vocab * self.hidden

    @property
    def head(self) -> int:
        """Parameters of the head that are not the embedding's (0 when tied)."""
        return 0 if self.tied else self.vocab * self.hidden

    def lora(self, r: int, targets: list[str], dora: bool) -> tuple[int, int]:
        """(adapter parameters, adapted modules per layer) as peft builds them: r x (in + out) per
        matched linear layer (a name or dotted suffix, as peft matches), plus DoRA's magnitude
        vector of one entry per output row."""
        total, modules = 0, 0
        for name, fan_in, fan_out in self.linears:
            if any(name == t or name.endswith("." + t) for t in targets):
                total += r * (fan_in + fan_out) + (fan_out if dora else 0)
                modules += 1
        return total, modules / max(self.layers, 1)


@dataclass(frozen=True)
class TowerShape:
    name: str
    params: int
    hidden: int
    intermediate: int
    layers_run: int
    positions: int               # patch positions the tower computes
    image_tokens: int            # what reaches the LM (drop_first: one fewer)


@dataclass(frozen=True)
class Shapes:
    lm: LMShape
    tower: TowerShape


def _auto_config(name: str, label: str):
    """transformers' config of a base (a local folder or a hub id in the cache), never a download
    of weights; a name that cannot be found is :func:`model.bases.check_base`'s one line."""
    from transformers import AutoConfig

    from model.bases import check_base

    from transformers.utils import logging as hf_logging

    check_base(name, label)
    # A full SigLIP config validates its unused text half and warns about its token ids; the plan
    # reads the vision half only, so transformers' warnings are held back while reading.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            return AutoConfig.from_pretrained(name, local_files_only=True)
        except OSError:
            return AutoConfig.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 -- a config transformers cannot read, whatever it raises: one line
        raise UserError(f"{label}: cannot read the config of {name}: {' '.join(str(exc).split())[:300]}") from None
    finally:
        hf_logging.set_verbosity(level)


def lm_shape(name: str) -> LMShape:
    import torch
    from transformers import AutoModelForCausalLM

    conf = _auto_config(name, "model.language_model")
    try:
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(conf)
    except Exception as exc:  # noqa: BLE001 -- not a causal LM transformers knows: one line
        raise UserError(f"model.language_model: {name} is not a causal language model transformers can build "
                        f"({' '.join(str(exc).split())[:200]})") from None
    text = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    emb = lm.get_input_embeddings()
    head = lm.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    linears = tuple((n, m.in_features, m.out_features) for n, m in lm.named_modules()
                    if isinstance(m, torch.nn.Linear) and m is not head)
    layers = lm.model.layers
    return LMShape(
        name=name, params=sum(p.numel() for p in lm.parameters()), vocab=emb.num_embeddings,
        hidden=text.hidden_size, intermediate=text.intermediate_size, layers=len(layers), heads=heads,
        q_width=heads * head_dim, kv_width=getattr(text, "num_key_value_heads", heads) * head_dim,
        tied=tied, qk_norm=any(n.endswith("q_norm") for n, _ in lm.named_modules()),
        quantizable=sum(i * o for _, i, o in linears), largest_layer=max(sum(p.numel() for p in layer.parameters())
                                                                          for layer in layers),
        linears=linears,
    )


def tower_shape(cfg: Config) -> TowerShape:
    import torch

    m = cfg.model
    if m.vision_backend == "timm":
        return _timm_shape(m.vision_model, m.vision_feature_layer, m.vision_feature_select, m.image_size)
    from transformers import SiglipVisionModel

    conf = _auto_config(m.vision_model, "model.vision_model")
    conf = copy.deepcopy(getattr(conf, "vision_config", conf))
    if not all(hasattr(conf, key) for key in ("image_size", "patch_size", "hidden_size", "num_hidden_layers")):
        raise UserError(f"model.vision_model: {m.vision_model} is not a SigLIP vision tower (its config is a "
                        f"{getattr(conf, 'model_type', '?')!r} one; model.vision_backend: timm takes a timm ViT)")
    conf.vision_use_head = False
    with torch.device("meta"):
        tower = SiglipVisionModel(conf)
    positions = (conf.image_size // conf.patch_size) ** 2
    layer = m.vision_feature_layer
    run = layer if layer >= 0 else conf.num_hidden_layers + 1 + layer
    if not 0 <= run <= conf.num_hidden_layers:
        raise UserError(f"model.vision_feature_layer: {layer} is out of range for a tower with {conf.num_hidden_layers} layers")
    return TowerShape(name=m.vision_model, params=sum(p.numel() for p in tower.parameters()), hidden=conf.hidden_size,
                      intermediate=conf.intermediate_size, layers_run=run, positions=positions,
                      image_tokens=positions - (m.vision_feature_select == "drop_first"))


def _timm_shape(name: str, layer: int, select: str, image_size: int | None) -> TowerShape:
    """A timm ViT on the meta device: a local folder's config.json (``architecture``, ``model_args``)
    or a timm model name."""
    import timm
    import torch

    from model.bases import check_base

    kwargs: dict = {"img_size": image_size} if image_size else {}
    arch = name
    if Path(name).is_dir():
        check_base(name, "model.vision_model")
        conf = json.loads((Path(name) / "config.json").read_text(encoding="utf-8"))
        arch, kwargs = conf["architecture"], {**conf.get("model_args", {}), **kwargs}
    try:
        with torch.device("meta"):
            tower = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- timm raises many types for an unknown model
        raise UserError(f"model.vision_model: cannot build timm model {name} to count it ({' '.join(str(exc).split())[:200]})") from None
    depth = len(tower.blocks)
    run = layer if layer >= 0 else depth + 1 + layer
    grid = tower.patch_embed.grid_size
    positions = grid[0] * grid[1] + tower.num_prefix_tokens
    mlp = tower.blocks[0].mlp.fc1.out_features
    return TowerShape(name=name, params=sum(p.numel() for p in tower.parameters()), hidden=tower.embed_dim,
                      intermediate=mlp, layers_run=run, positions=positions,
                      image_tokens=positions - (select == "drop_first"))


def read_shapes(cfg: Config) -> Shapes:
    """The configured bases' shapes (config files only; nothing is downloaded or loaded)."""
    return Shapes(lm=lm_shape(cfg.model.language_model), tower=tower_shape(cfg))


# -- the estimate -------------------------------------------------------------------------------


def projector_params(shapes: Shapes) -> int:
    """The two-layer MLP projector: tower width -> LM width -> LM width, with biases."""
    lm, tower = shapes.lm, shapes.tower
    return tower.hidden * lm.hidden + lm.hidden + lm.hidden * lm.hidden + lm.hidden


@dataclass(frozen=True)
class Workload:
    """One micro-batch as the estimate sees it."""

    rows: int                    # sequences in a micro-batch (DPO: 2 per pair)
    seq: int                     # tokens per row: image tokens + text
    supervised: int              # answer tokens per row (logits are computed there only)
    images: int                  # images per micro-batch


@dataclass(frozen=True)
class Item:
    name: str
    gib: float


@dataclass(frozen=True)
class Estimate:
    """The peak phase's items, every phase's total, and whether it fits."""

    items: tuple[Item, ...]
    phase: str                   # the moment of the peak
    phases: dict[str, float]     # phase -> allocated GiB
    allocated_gib: float         # the peak of allocated memory (what max_memory_allocated measures)
    overhead_gib: float
    gpu_gib: float
    workload: Workload
    notes: tuple[str, ...] = ()

    @property
    def total_gib(self) -> float:
        return self.allocated_gib + self.overhead_gib

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.gpu_gib


@dataclass(frozen=True)
class DeepSpeed:
    stage: int = 0               # 0: no DeepSpeed
    offload_optimizer: bool = False
    offload_param: bool = False


def read_deepspeed(path: str | None) -> DeepSpeed:
    """The ZeRO stage and offloads of ``train.deepspeed`` (none when unset)."""
    if not path:
        return DeepSpeed()
    try:
        conf = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"train.deepspeed: {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"train.deepspeed: {path} is not a readable JSON file ({' '.join(str(exc).split())})") from None
    zero = conf.get("zero_optimization", {}) or {}

    def offloaded(key: str) -> bool:
        return (zero.get(key) or {}).get("device") in ("cpu", "nvme")

    return DeepSpeed(stage=int(zero.get("stage", 0)), offload_optimizer=offloaded("offload_optimizer"),
                     offload_param=offloaded("offload_param"))


def _pairs(cfg: Config) -> bool:
    """Whether the configured stage trains on preference pairs (two answers per sample)."""
    from training.dpo import DPOStage
    from training.stages import stage_of

    return isinstance(stage_of(cfg), DPOStage)


def _workload(cfg: Config, shapes: Shapes, text_tokens: int, answer_tokens: int) -> Workload:
    image = shapes.tower.image_tokens
    seq = image + text_tokens
    if cfg.data.max_length > image:
        seq = min(seq, cfg.data.max_length)  # the dataset cuts the tail, never inside the image tokens
    pairs = 2 if _pairs(cfg) else 1
    rows = cfg.train.per_device_batch_size * pairs
    return Workload(rows=rows, seq=seq, supervised=max(0, min(answer_tokens, seq - image)),
                    images=cfg.train.per_device_batch_size)


def _layer_bytes(kind: str, compiled: bool, lm: LMShape, lora_modules: float, r: int, eager_attention_seq: int) -> float:
    """Bytes saved for backward per token by one decoder layer (:data:`LAYER_BYTES`)."""
    (cd, ci, ckv, cq), qk = LAYER_BYTES[(kind, compiled)]
    per = cd * lm.hidden + ci * lm.intermediate + ckv * lm.kv_width + cq * lm.q_width + 4 * lm.heads + 8
    if lm.qk_norm:
        per += qk * (lm.kv_width + lm.q_width)
    per += 2 * r * lora_modules
    # attn_implementation eager materialises the attention probabilities: fp32 softmax and its
    # bf16 copy per head and key (an estimate; the counts above are SDPA's)
    per += 6 * lm.heads * eager_attention_seq
    return per


@dataclass(frozen=True)
class _Run:
    """What the configuration decides, in the terms of the formula."""

    full: bool                   # the whole LM trains (finetune full at a stage that trains it)
    lora: bool
    amp: bool                    # bf16 autocast over fp32 master weights (train.bf16 without DeepSpeed)
    module_bf16: bool            # DeepSpeed bf16: the module itself in bf16, fp32 masters in the optimizer
    wbytes: int                  # bytes per frozen weight (model.dtype)
    lm_trainable: int            # LM parameters that train
    trainable: int               # every parameter that trains
    projector: int
    lora_params: int
    lora_modules: float          # adapted modules per layer
    embedding_fp32: bool         # the token embedding (a tied head too) is an fp32 matrix


def _run(cfg: Config, shapes: Shapes, ds: DeepSpeed) -> _Run:
    from training.stages import stage_of

    t, lm, tower = cfg.train, shapes.lm, shapes.tower
    trains_lm = stage_of(cfg).trains_language_model
    full, lora = trains_lm and t.finetune == "full", trains_lm and t.finetune == "lora"
    projector = projector_params(shapes)
    lora_params, modules = lm.lora(t.lora.r, t.lora.target_modules, t.lora.method == "dora") if lora else (0, 0.0)
    lm_trainable = (lm.params - (0 if t.train_embeddings else lm.embedding + lm.head)) if full else 0
    trainable = (projector * (not _pairs(cfg))  # the preference stage keeps the projector frozen
                 + lora_params + lm_trainable + (tower.params if t.train_vision_tower else 0))
    wbytes = 4 if cfg.model.dtype == "float32" else 2
    return _Run(full=full, lora=lora, amp=t.bf16 and not ds.stage, module_bf16=t.bf16 and ds.stage > 0,
                wbytes=wbytes, lm_trainable=lm_trainable, trainable=trainable, projector=projector,
                lora_params=lora_params, lora_modules=modules,
                embedding_fp32=(full and t.train_embeddings) or (wbytes == 4 and cfg.model.quantize == "none"))


def _resident(cfg: Config, shapes: Shapes, run: _Run, ds: DeepSpeed, gpus: int) -> tuple[dict[str, float], float, str]:
    """What one GPU holds for the whole step: (items, bytes of one full set of gradients, their label)."""
    t, m, lm, tower = cfg.train, cfg.model, shapes.lm, shapes.tower
    items: dict[str, float] = {}
    nf4 = NF4_BYTES[m.quantize_double] * lm.quantizable + 2 * (lm.params - lm.quantizable)
    if run.module_bf16:
        module = (nf4 if m.quantize != "none" else 2 * lm.params) + 2 * (tower.params + run.projector + run.lora_params)
        if ds.stage >= 3:
            items["parameters gathered for one layer and the head (ZeRO-3)"] = 2 * (2 * lm.largest_layer + lm.embedding)
        where = "offloaded" if ds.offload_param else "sharded" if ds.stage >= 3 else "every GPU"
        items[f"weights (bf16, {where})"] = 0 if ds.offload_param else module / (gpus if ds.stage >= 3 else 1)
        items["fp32 master weights + AdamW states (" + ("offloaded" if ds.offload_optimizer else f"ZeRO-{ds.stage}")
              + ")"] = 0 if ds.offload_optimizer else 12 * run.trainable / (gpus if ds.stage >= 1 else 1)
        grads = 2 * run.trainable / (gpus if ds.stage >= 2 else 1)
        if ds.offload_optimizer and ds.stage >= 2:  # reduced partitions go to the optimizer on the CPU
            grads = 2 * 2 * lm.hidden * lm.hidden  # what stays: two reduce buckets ("auto": hidden^2)
        return items, grads, "gradients (bf16" + (", sharded)" if ds.stage >= 2 else ")")
    if m.quantize != "none":
        items[f"language model weights ({m.quantize.upper()}, frozen)"] = nf4
    elif lm.params - run.lm_trainable:
        items[f"language model weights ({m.dtype}, frozen)"] = run.wbytes * (lm.params - run.lm_trainable)
    if run.lm_trainable:
        items["language model weights (fp32 master, trained)"] = 4 * run.lm_trainable
    if not t.train_vision_tower:
        items[f"vision tower weights ({m.dtype}, frozen)"] = run.wbytes * tower.params
    small = run.trainable - run.lm_trainable
    items["projector" + (" + LoRA" if run.lora else "") + (" + tower" if t.train_vision_tower else "")
          + " (fp32, trained)"] = 4 * small
    items["AdamW states (2 x fp32)"] = 8 * run.trainable
    if gpus > 1:  # DDP copies the gradients into its all-reduce buckets (gradient_as_bucket_view off)
        items["DDP gradient buckets"] = 4 * run.trainable
    return items, 4 * run.trainable, "gradients (fp32)"


def _layer_kind(cfg: Config, run: _Run) -> str:
    """Which row of :data:`LAYER_BYTES` describes the LM's layers in this run."""
    lora = "lora" if cfg.train.lora.dropout > 0 else "lora_nodrop"
    if run.module_bf16:
        return "bf16" if run.full else lora if run.lora else "frozen"
    if not cfg.train.bf16:
        return "full32" if run.full else "lora32" if run.lora else "frozen32"
    if run.full or run.embedding_fp32:  # fp32 weights under autocast: the residual stream stays fp32
        return "full"
    return lora if run.lora else "frozen"


def estimate(cfg: Config, shapes: Shapes, gpus: int = 1, gpu_gib: float = DEFAULT_GPU_GIB,
             text_tokens: int = DEFAULT_TEXT_TOKENS, answer_tokens: int = DEFAULT_ANSWER_TOKENS,
             deepspeed: DeepSpeed | None = None) -> Estimate:
    """Peak GPU memory of one training step of ``cfg`` on each of ``gpus`` GPUs (module docstring).
    ``deepspeed``: the ZeRO settings when known without reading ``train.deepspeed`` (a suggestion
    names the repository's configs/, which need not exist where the plan runs)."""
    t, m, lm, tower = cfg.train, cfg.model, shapes.lm, shapes.tower
    ds = deepspeed or read_deepspeed(t.deepspeed)
    gpus = max(1, gpus)
    run = _run(cfg, shapes, ds)
    work = _workload(cfg, shapes, text_tokens, answer_tokens)
    items, grads, grads_label = _resident(cfg, shapes, run, ds, gpus)
    accumulating = t.gradient_accumulation_steps > 1
    if accumulating:  # from the second micro-batch on, a full set of gradients is there throughout
        items[grads_label + " of earlier micro-batches"] = grads
    base = sum(items.values())

    # activations: saved for backward from the forward pass until their layer's backward
    T, n, V, d = work.rows * work.seq, work.rows * work.supervised, lm.vocab, lm.hidden
    kind = _layer_kind(cfg, run)
    per_layer = _layer_bytes(kind, t.torch_compile, lm, run.lora_modules, t.lora.r,
                             work.seq if m.attn_implementation == "eager" else 0)
    residual = 4 if kind in ("full", "full32", "frozen32", "lora32") else 2
    outside = T * 8 * d + work.images * tower.image_tokens * (2 * tower.hidden + 6 * d) * (1 if t.bf16 else 2)
    if t.train_vision_tower:
        (cd, ci, ckv, cq), _ = LAYER_BYTES[("full", False)]
        vit = (cd + ckv + cq) * tower.hidden + ci * tower.intermediate
        outside += work.images * tower.positions * tower.layers_run * (4 * tower.hidden if t.activation_checkpointing else vit)
    if t.activation_checkpointing:
        acts, act_label = lm.layers * T * residual * d + outside, "activations (checkpointed: each layer's input)"
    else:
        acts, act_label = lm.layers * T * per_layer + outside, f"activations ({per_layer / 1024:.1f} KiB per token per layer)"
    one_layer = T * (per_layer + 8 * d)

    # bf16 copies autocast makes of fp32 weights: saved for backward by each matmul that needs one,
    # and cached until the forward ends (trainable weights of the layers that run eagerly)
    head_fp32 = run.embedding_fp32
    casts_saved = casts_fwd = 0.0
    if run.amp:
        lm_fp32 = lm.params if run.wbytes == 4 and m.quantize == "none" else run.lm_trainable
        matmul_fp32 = lm_fp32 - (lm.embedding if head_fp32 and not lm.tied else 0)  # a lookup casts nothing
        casts_saved = 2 * (run.projector + (lm.embedding if head_fp32 else 0))
        if not t.activation_checkpointing:
            casts_saved = 2 * (run.projector + run.lora_params + matmul_fp32)
        cached = 2 * (run.projector + run.lora_params + (lm.embedding if head_fp32 and run.lm_trainable else 0))
        casts_fwd = max(casts_saved, cached + (0 if t.torch_compile else 2 * run.lm_trainable))

    # A tied matrix gets two gradients (head, embedding) that autograd adds before storing: in place
    # under autocast (the head's gradient arrives as a fresh fp32 copy), into a new tensor in fp32
    # training (seen with the profiler on the CPU: aten::add_ against aten::add); with accumulation
    # the sum is then added to the stored gradient.
    tied_grads = 0.0
    if run.full and t.train_embeddings and lm.tied:
        tied_grads = (2 if run.module_bf16 else 4 if run.amp else 8) * lm.embedding * (2 if accumulating else 1)
    grad_share = 1 / (gpus if run.module_bf16 and ds.stage >= 2 else 1)
    untied_embedding_grad = (0 if lm.tied or not (run.full and t.train_embeddings)
                             else (2 if run.module_bf16 else 4) * lm.embedding * grad_share)
    new_grads = 0 if accumulating else grads  # with accumulation they are added into the stored ones
    phases: dict[str, dict[str, float]] = {
        "vision tower forward": {"vision tower forward (no grad, one layer at a time)":
                                 work.images * tower.positions * (4 * tower.hidden + 2 * tower.intermediate)
                                 * (2 if run.module_bf16 else run.wbytes)},
        "end of the forward pass": {"bf16 weight copies (autocast)": casts_fwd, act_label: acts,
                                    f"logits at {n:,} supervised positions (forward)": (10 if t.bf16 else 8) * n * V},
        "start of the backward pass": {"bf16 weight copies saved for backward": casts_saved, act_label: acts,
                                       f"logits and their gradients at {n:,} supervised positions": 12 * n * V},
        "end of the backward pass": {grads_label: new_grads, "tied embedding gradients being added": tied_grads},
    }
    if t.activation_checkpointing:
        head_grad = 0 if accumulating or not (run.full and head_fp32) else (2 if run.module_bf16 else 4) * lm.embedding * grad_share
        phases["recomputing the last layer"] = {
            "bf16 weight copies saved for backward": casts_saved, act_label: acts,
            "one layer recomputed (its activations)": one_layer, "head gradient": head_grad}
        phases["recomputing the first layer"] = {
            grads_label: max(0.0, new_grads - untied_embedding_grad), "one layer recomputed (its activations)": one_layer,
            "activations outside the layers": outside}
    totals = {name: base + sum(extra.values()) for name, extra in phases.items()}
    peak = max(totals, key=totals.get)
    for name, value in phases[peak].items():
        items[name] = items.get(name, 0) + value
    allocated = totals[peak] / GIB
    return Estimate(
        items=tuple(Item(k, v / GIB) for k, v in items.items() if v), phase=peak,
        phases={k: v / GIB for k, v in totals.items()}, allocated_gib=allocated,
        overhead_gib=CUDA_CONTEXT_GIB + ALLOCATOR_SLACK * allocated, gpu_gib=gpu_gib, workload=work,
        notes=_notes(cfg, run),
    )


def _notes(cfg: Config, run: _Run) -> tuple[str, ...]:
    """What the estimate of this run rests on that was not measured."""
    t, m = cfg.train, cfg.model
    notes = []
    if m.quantize != "none":
        notes.append("QLoRA: activations counted as LoRA's (the 4-bit layers' own were not measured)")
    if run.lora and t.lora.method == "dora":
        notes.append("DoRA recomputes each adapted weight's norm every step (transient, not counted)")
    if _pairs(cfg):
        notes.append("DPO: estimated as a supervised step over both answers of each pair (2 rows per pair)")
    if m.attn_implementation == "eager":
        notes.append("attn_implementation eager: its attention probabilities are an estimate")
    if t.train_vision_tower:
        notes.append("the trained tower's activations are counted with the LM's per-layer formula (rough)")
    if t.deepspeed:
        notes.append("DeepSpeed: the ZeRO paper's accounting (bf16 weights and gradients, fp32 master + Adam), not measured")
    return tuple(notes)


# -- what to change -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    """A change (the ``--set`` overrides that make it) and the estimate with it."""

    label: str
    overrides: tuple[str, ...]
    estimate: Estimate
    cost: float
    kinds: frozenset[str]        # which changes (checkpointing, batch, zero2, ..., lora, nf4)


# Relative cost of each change, to rank them (assumed, from bench/RESULTS.md where it measured
# one): activation checkpointing costs a recomputed forward (1.5B full, compiled: 49.3 -> 40.1
# samples/s); halving the micro-batch with twice the accumulation loses some GPU efficiency
# (30.1 -> 26.4 samples/s from 16 to 8); ZeRO shards need more GPUs and communication; offloading
# runs the optimizer on the CPU (several times slower); LoRA and QLoRA change what trains.
COSTS = {"checkpointing": 0.25, "halving": 0.12, "zero2": 0.05, "zero3": 0.2, "offload": 2.0, "lora": 3.0, "nf4": 3.5}
ZERO_CONFIGS = {"zero2": "configs/zero2.json", "zero3": "configs/zero3.json", "offload": "configs/zero3_offload.json"}
ZERO_SETTINGS = {"zero2": DeepSpeed(2), "zero3": DeepSpeed(3), "offload": DeepSpeed(3, True, True)}


def _candidates(cfg: Config, gpus: int):
    """Each combination of the usual changes that applies to ``cfg`` (see :func:`_combination`)."""
    from training.stages import stage_of

    t, m = cfg.train, cfg.model
    stage = stage_of(cfg)
    current = read_deepspeed(t.deepspeed)
    ckpt = [None] if t.activation_checkpointing else [None, "checkpointing"]
    batches, b = [], t.per_device_batch_size
    while b > 1:
        b = (b + 1) // 2
        batches.append(b)
    zero = [None]
    if gpus > 1 and current.stage < 2:
        zero.append("zero2")
    if gpus > 1 and current.stage < 3:
        zero.append("zero3")
    if not current.offload_optimizer:
        zero.append("offload")
    lora_options = [None]
    if stage.trains_language_model and t.finetune == "full":
        lora_options.append("lora")
    for c in ckpt:
        for batch in [None, *batches]:
            for z in zero:
                for lo in lora_options:
                    finetune = "lora" if lo else t.finetune
                    nf4_ok = (m.quantize == "none" and stage.quantize_refusal(cfg) is None and finetune == "lora"
                              and stage.trains_language_model and not t.train_vision_tower and t.lora.init != "pissa")
                    for q in [None, "nf4"] if nf4_ok else [None]:
                        yield _combination(cfg, c, batch, z, lo, q)


def _combination(cfg: Config, ckpt, batch, zero, lora, nf4):
    """(label, overrides, cost, changed config, ZeRO choice, kinds of change) of one combination."""
    t = cfg.train
    new = copy.deepcopy(cfg)
    overrides, labels, cost = [], [], 0.0
    if ckpt:
        new.train.activation_checkpointing = True
        overrides.append("train.activation_checkpointing=true")
        labels.append("activation checkpointing")
        cost += COSTS["checkpointing"]
    if batch:
        accum = math.ceil(t.per_device_batch_size * t.gradient_accumulation_steps / batch)
        new.train.per_device_batch_size, new.train.gradient_accumulation_steps = batch, accum
        overrides += [f"train.per_device_batch_size={batch}", f"train.gradient_accumulation_steps={accum}"]
        labels.append(f"micro-batch {batch} x {accum} accumulation")
        cost += COSTS["halving"] * math.log2(t.per_device_batch_size / batch)
    if zero:
        new.train.deepspeed = ZERO_CONFIGS[zero]
        overrides.append(f"train.deepspeed={ZERO_CONFIGS[zero]}")
        labels.append({"zero2": "ZeRO-2", "zero3": "ZeRO-3", "offload": "ZeRO-3 with CPU offload"}[zero])
        cost += COSTS[zero]
    if lora:
        new.train.finetune = "lora"
        overrides.append("train.finetune=lora")
        labels.append("LoRA instead of a full fine-tune")
        cost += COSTS["lora"]
    if nf4:
        new.model.quantize = "nf4"
        overrides.append("model.quantize=nf4")
        labels.append("QLoRA (4-bit LM)")
        cost += COSTS["nf4"]
    kinds = frozenset(k for k, on in (("checkpointing", ckpt), ("batch", batch), (zero, zero), ("lora", lora),
                                       ("nf4", nf4)) if on)
    return ", ".join(labels), tuple(overrides), cost, new, zero, kinds


def suggest(cfg: Config, shapes: Shapes, gpus: int, gpu_gib: float, text_tokens: int = DEFAULT_TEXT_TOKENS,
            answer_tokens: int = DEFAULT_ANSWER_TOKENS, limit: int = 5) -> list[Suggestion]:
    """The cheapest combinations of changes that fit, cheapest first; a combination of the same kinds
    of change as one already listed, or of more, is left out (a smaller micro-batch than one that
    fits, checkpointing on top of a change that fits alone)."""
    found: list[Suggestion] = []
    for label, overrides, cost, new, zero, kinds in sorted(_candidates(cfg, gpus), key=lambda c: c[2]):
        if not overrides or any(s.kinds <= kinds for s in found):
            continue
        est = estimate(new, shapes, gpus, gpu_gib, text_tokens, answer_tokens, ZERO_SETTINGS.get(zero))
        if est.fits:
            found.append(Suggestion(label, overrides, est, cost, kinds))
            if len(found) >= limit:
                break
    return found


# -- the command line ---------------------------------------------------------------------------


def default_gpu_memory() -> tuple[float, str]:
    """The visible GPU's total memory (the local rank's), else :data:`DEFAULT_GPU_GIB`."""
    import torch

    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count()
        props = torch.cuda.get_device_properties(index)
        return props.total_memory / GIB, f"{props.name}, the visible GPU"
    return DEFAULT_GPU_GIB, "no GPU visible: assumed; set --gpu-memory GiB"


def default_gpus() -> int:
    """``WORLD_SIZE`` under a launcher, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class Plan:
    estimate: Estimate
    suggestions: tuple[Suggestion, ...]
    header: str
    serving: tuple["ServingEstimate", ...] = ()  # fp16 / int8 / int4 serving on the same GPU


def make_plan(cfg: Config, gpu_gib: float | None = None, gpus: int | None = None,
              text_tokens: int = DEFAULT_TEXT_TOKENS, answer_tokens: int = DEFAULT_ANSWER_TOKENS,
              context: int | None = None) -> Plan:
    """The estimate for ``cfg`` and, when it does not fit, what would (``train.py --plan``); and
    which precision serves the model on the same GPU, for ``context``-token sequences (default: one
    training sample, image tokens + ``text_tokens``)."""
    t = cfg.train
    for name in ("per_device_batch_size", "gradient_accumulation_steps"):
        if getattr(t, name) < 1:
            raise UserError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    gpus = gpus or default_gpus()
    source = "--gpu-memory"
    if gpu_gib is None:
        gpu_gib, source = default_gpu_memory()
    shapes = read_shapes(cfg)
    est = estimate(cfg, shapes, gpus, gpu_gib, text_tokens, answer_tokens)
    suggestions = () if est.fits else tuple(suggest(cfg, shapes, gpus, gpu_gib, text_tokens, answer_tokens))
    serving = serving_estimates(shapes, context or shapes.tower.image_tokens + text_tokens, gpu_gib)
    return Plan(est, suggestions, _header(cfg, shapes, est, gpus, gpu_gib, source), serving)


def _count(n: float) -> str:
    """1.54B, 413M, 67.2K."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.{2 if n < 10 * size else 1 if n < 100 * size else 0}f}{unit}"
    return str(int(n))


def _header(cfg: Config, shapes: Shapes, est: Estimate, gpus: int, gpu_gib: float, source: str) -> str:
    """What was estimated: the run, the bases, one micro-batch, the GPU."""
    from training.stages import stage_of

    t, w, lm, tower = cfg.train, est.workload, shapes.lm, shapes.tower
    ds = read_deepspeed(t.deepspeed)
    what = {"full": "full fine-tune", "lora": f"LoRA r={t.lora.r}" + (f" ({t.lora.method})" if t.lora.method != "lora" else "")}
    trains = what[t.finetune] if stage_of(cfg).trains_language_model else "projector only"
    return "\n".join([
        f"memory plan: stage {t.stage}, {trains}" + (f", {cfg.model.quantize.upper()} language model" if cfg.model.quantize != "none" else ""),
        f"  language model {lm.name}: {_count(lm.params)} parameters ({lm.layers} layers, hidden {lm.hidden}, vocabulary {lm.vocab:,})",
        f"  vision tower {tower.name}: {_count(tower.params)} parameters, {tower.image_tokens} image tokens",
        f"  per GPU: {w.rows} row{'s' * (w.rows != 1)} x {w.seq} tokens ({tower.image_tokens} image + {w.seq - tower.image_tokens} text, "
        f"{w.supervised} supervised), {t.gradient_accumulation_steps} accumulation step(s); activation checkpointing "
        f"{'on' if t.activation_checkpointing else 'off'}; {'compiled' if t.torch_compile else 'eager'}; "
        f"{'bf16' if t.bf16 else 'fp32'}; " + (f"DeepSpeed ZeRO-{ds.stage}" + (" + offload" if ds.offload_optimizer else "")
                                                if ds.stage else "no DeepSpeed") + f"; {gpus} GPU(s)",
        f"  GPU: {gpu_gib:.1f} GiB ({source})",
    ])


def format_plan(plan: Plan) -> str:
    """The breakdown table, the verdict and the suggestions, as ``train.py --plan`` prints them."""
    est = plan.estimate
    width = max(len(i.name) for i in est.items) + 2
    lines = [plan.header, "", f"  {'at the peak (' + est.phase + ')':{width}s} {'GiB':>7s}"]
    lines += [f"  {item.name:{width}s} {item.gib:7.2f}" for item in est.items]
    lines += [
        f"  {'peak allocated':{width}s} {est.allocated_gib:7.2f}",
        f"  {'CUDA context + allocator slack':{width}s} {est.overhead_gib:7.2f}",
        f"  {'total':{width}s} {est.total_gib:7.2f}",
        f"  {'GPU':{width}s} {est.gpu_gib:7.2f}  "
        + ("fits" if est.fits else f"does not fit ({est.total_gib - est.gpu_gib:.2f} GiB over)"),
        "",
        "  phases (GiB allocated): " + ", ".join(f"{k} {v:.2f}" for k, v in est.phases.items()),
    ]
    lines += [f"  note: {note}" for note in est.notes]
    if not est.fits:
        if plan.suggestions:
            lines += ["", "changes that fit, cheapest first:"]
            for k, s in enumerate(plan.suggestions, 1):
                launcher = " (under torchrun or deepspeed)" if any("deepspeed" in o for o in s.overrides) else ""
                lines.append(f"  {k}. {s.label}: {s.estimate.total_gib:.2f} GiB{launcher}")
                lines.append("     " + " ".join(f"--set {o}" for o in s.overrides))
        else:
            lines += ["", "no combination of checkpointing, smaller micro-batches, ZeRO, offload, LoRA and QLoRA fits "
                      f"{est.gpu_gib:.1f} GiB: use a larger GPU or a smaller model"]
    if plan.serving:
        lines += ["", format_serving(plan.serving, est.gpu_gib)]
    return "\n".join(lines)


# -- serving: which weight precision fits one GPU -------------------------------------------------
#
# Serving holds no gradients or optimizer: the weights, the KV cache of the sequences in flight,
# one layer's prefill activations and the logits of the last positions. The decoder's linear
# layers are what a serving quantization (GPTQ / AWQ, export.py --quantize) stores in 8 or 4 bits,
# with one fp16 scale and one packed zero point per group of SERVING_GROUP inputs; the embedding,
# lm_head, norms, biases, the vision tower and the projector stay 16-bit (as export.py writes
# them). vLLM pre-allocates --gpu-memory-utilization (0.9 by default) of the card and fills what
# the weights and its profiling pass leave with KV-cache blocks, so "fits" means within that share.
# Not measured on a GPU: the activation and overhead terms (the weights and the KV cache are
# exact byte counts).

SERVING_GROUP = 128
SERVING_PRECISIONS = {"fp16": 16, "int8": 8, "int4": 4}
VLLM_MEMORY_UTILIZATION = 0.9


def linear_bytes(bits: int, group: int = SERVING_GROUP) -> float:
    """Bytes per weight of a quantized linear layer: the packed values plus, per group, an fp16
    scale and a zero point of ``bits`` bits (int4 at group 128: 0.5 + 2.5 / 128 = 0.5195)."""
    return 2.0 if bits >= 16 else bits / 8 + (2 + bits / 8) / group


@dataclass(frozen=True)
class ServingEstimate:
    """One precision's serving memory on one GPU, for ``context``-token sequences (GiB)."""

    precision: str
    weights_gib: float           # LM (its linears at the precision) + tower + projector, 16-bit otherwise
    kv_per_sequence_gib: float   # fp16 K and V of every layer for one sequence of ``context`` tokens
    activations_gib: float       # one sequence's prefill through one layer + its last logits (fp32)
    overhead_gib: float          # CUDA context
    budget_gib: float            # the share of the GPU vLLM takes (--gpu-memory-utilization)
    context: int

    @property
    def total_gib(self) -> float:
        """Serving one sequence of ``context`` tokens."""
        return self.weights_gib + self.kv_per_sequence_gib + self.activations_gib + self.overhead_gib

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.budget_gib

    @property
    def sequences(self) -> int:
        """How many sequences of ``context`` tokens the KV cache left over holds at once."""
        room = self.budget_gib - self.weights_gib - self.activations_gib - self.overhead_gib
        return max(0, math.floor(room / self.kv_per_sequence_gib))


def serving_estimates(shapes: Shapes, context: int, gpu_gib: float,
                      utilization: float = VLLM_MEMORY_UTILIZATION) -> tuple[ServingEstimate, ...]:
    """fp16 / int8 / int4 weights + the KV cache for ``context`` tokens on a ``gpu_gib`` card."""
    if context < 1:
        raise UserError(f"the serving context must be at least 1 token, got {context}")
    lm, tower = shapes.lm, shapes.tower
    d, i = lm.hidden, lm.intermediate
    sixteen_bit = (lm.params - lm.quantizable) + tower.params + projector_params(shapes)
    kv = 2 * lm.layers * lm.kv_width * 2 * context
    activations = context * (2 * d + lm.q_width + 2 * lm.kv_width + 2 * i) * 2 + lm.vocab * 4
    return tuple(ServingEstimate(
        precision=name, weights_gib=(2 * sixteen_bit + linear_bytes(bits) * lm.quantizable) / GIB,
        kv_per_sequence_gib=kv / GIB, activations_gib=activations / GIB, overhead_gib=CUDA_CONTEXT_GIB,
        budget_gib=gpu_gib * utilization, context=context) for name, bits in SERVING_PRECISIONS.items())


def format_serving(estimates: tuple[ServingEstimate, ...], gpu_gib: float) -> str:
    """The serving table ``train.py --plan`` prints after the training plan."""
    first = estimates[0]
    lines = [f"serving (vLLM on one GPU: {VLLM_MEMORY_UTILIZATION:.0%} of {gpu_gib:.1f} GiB = {first.budget_gib:.2f} GiB; "
             f"{first.context}-token sequences, fp16 KV cache; int8/int4: GPTQ/AWQ group {SERVING_GROUP}, language-model "
             "linears only):",
             f"  {'weights':9s} {'GiB':>7s} {'KV/seq':>8s} {'total':>7s}  fits  sequences at once"]
    for e in estimates:
        lines.append(f"  {e.precision:9s} {e.weights_gib:7.2f} {e.kv_per_sequence_gib:8.3f} {e.total_gib:7.2f}  "
                     f"{'yes ' if e.fits else 'no  '}  {e.sequences if e.fits else '-'}")
    fitting = [e.precision for e in estimates if e.fits]
    lines.append(f"  serve it in {fitting[0]}" + (f" (the highest precision that fits {gpu_gib:.1f} GiB)" if fitting[0] != "fp16" else "")
                 if fitting else f"  no precision fits {gpu_gib:.1f} GiB: use a larger GPU or tensor parallelism")
    return "\n".join(lines)

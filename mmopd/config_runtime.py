"""The run sections of mmopd's config (train, learner, eval, sft, warmup, ray, routing, offline) as frozen
dataclasses: how a run is scheduled, evaluated, warmed up and spread over processes. One docstring per field
(`--help`); `mmopd/config.py` holds the whole `Config` and re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmopd.config_sections import ConfigError


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

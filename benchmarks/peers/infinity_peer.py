"""Peer (c): infinity (``infinity-emb``, ``POST /classify``) serving the same weights.

infinity's pins conflict with ours, so it gets its own virtualenv (``INFINITY_VENV``, built
on first use with ``pip install 'infinity-emb[all]' torch==2.13.0``). It serves HF
sequence-classification folders through ``transformers.pipeline("text-classification")``,
so ``export_model`` writes one that computes exactly what modserve's model computes:

* the same encoder weights (``bert.*``) and head (``classifier.*``) in fp32;
* a small remote-code class (``trust_remote_code``, infinity's default) doing modserve's
  pooling (masked mean, or CLS) + linear; ``problem_type: multi_label_classification`` makes
  the pipeline apply a sigmoid per label. A stock ``BertForSequenceClassification`` would
  NOT be equivalent (it pools through the CLS token + a tanh dense layer);
* ``model_max_length`` = the model window: longer inputs are truncated (modserve chunks them
  and takes the max over chunks); and infinity answers the raw head labels only (no derived
  categories, hierarchy or thresholds, which are microseconds of numpy in modserve).

``export_model`` checks the equivalence on a few texts (max abs score difference).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

INFINITY_VENV = Path(tempfile.gettempdir()) / "infinity-venv"
INSTALL = ["infinity-emb[all]", "torch==2.13.0"]
INSTALL_TIMEOUT_S = 1200
EXPORT_ROOT = Path(tempfile.gettempdir()) / "modserve-infinity-export"
MODELING_FILE = "modeling_modserve_hf.py"
CLASS_NAME = "ModserveForSequenceClassification"
LAST_EXPORT_MAX_ABS_DIFF: float | None = None  # set by export_model, copied into the results

MODELING_SOURCE = '''"""modserve's classifier as an HF sequence-classification model."""
import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class ModserveForSequenceClassification(BertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.pooling = getattr(config, "modserve_pooling", "mean")
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0].float()
        else:
            m = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
        return SequenceClassifierOutput(logits=self.classifier(pooled))
'''


def ensure_venv() -> Path:
    """The infinity virtualenv's ``infinity_emb`` executable; builds the venv if missing."""
    exe = INFINITY_VENV / "bin" / "infinity_emb"
    if exe.exists():
        return exe
    subprocess.run(["python3", "-m", "venv", str(INFINITY_VENV)], check=True)
    r = subprocess.run(
        [str(INFINITY_VENV / "bin" / "pip"), "install", "-q", *INSTALL],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    if r.returncode != 0 or not exe.exists():
        raise RuntimeError(f"pip install {' '.join(INSTALL)} failed:\n{r.stderr[-3000:]}")
    # The PyPI torchvision wheel that [all] pulls is built for another torch and breaks
    # `import transformers` ("operator torchvision::nms does not exist"); infinity's text
    # classification does not need it.
    subprocess.run(
        [str(INFINITY_VENV / "bin" / "pip"), "uninstall", "-y", "-q", "torchvision"],
        check=False,
        capture_output=True,
    )
    return exe


ONNX_FILE = "model.onnx"  # what infinity's optimum engine loads (ORTModelForSequenceClassification)


def export_onnx(model_dir: Path, out: Path) -> None:
    """``out/model.onnx``: modserve's logits (pooling + linear, before the sigmoid, which the
    pipeline applies for ``multi_label_classification``) as ONNX, float32, for ``--engine
    optimum``. optimum's own exporter would build a stock ``BertForSequenceClassification``
    (CLS + tanh pooler), which is not this model."""
    import torch as t

    from serving.model.load import load_model
    from serving.model.onnx_export import export_float

    class Logits(t.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = load_model(model_dir, "cpu", "float32").moderation_model

        def forward(self, input_ids: t.Tensor, attention_mask: t.Tensor) -> t.Tensor:
            # infinity's optimum classifier does not truncate (its torch one does, at
            # model_max_length): cut here, as that tokenizer setting would.
            n = self.model.cfg.max_length_tokens
            return self.model.logits(input_ids[:, :n], attention_mask[:, :n])

    export_float(Logits().eval(), out / ONNX_FILE, output="logits")


def export_model(model_dir: Path, engine: str = "torch") -> tuple[Path, float]:
    """HF folder equivalent to ``model_dir`` (plus ``model.onnx`` for ``engine`` optimum);
    returns (folder, max abs score difference)."""
    from safetensors.torch import load_file, save_file

    from serving.model.load import HEAD_PREFIX, WEIGHTS_FILE
    from serving.model.repo_config import load_model_config

    cfg = load_model_config(model_dir)
    vdir = cfg.version_dir(model_dir)
    out = EXPORT_ROOT / f"{cfg.name}-{engine}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    hf = json.loads((vdir / "config.json").read_text())
    if hf.get("model_type") != "bert":
        raise ValueError(f"export supports BERT encoders only, not {hf.get('model_type')!r}")
    hf.update(
        {
            "architectures": [CLASS_NAME],
            "auto_map": {
                "AutoModelForSequenceClassification": f"{MODELING_FILE[:-3]}.{CLASS_NAME}"
            },
            "problem_type": "multi_label_classification",
            "id2label": dict(enumerate(cfg.labels)),
            "label2id": {w: i for i, w in enumerate(cfg.labels)},
            "modserve_pooling": cfg.pooling,
            "torch_dtype": "float32",
        }
    )
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    (out / MODELING_FILE).write_text(MODELING_SOURCE)
    state = load_file(str(vdir / WEIGHTS_FILE))
    renamed = {
        (k if k.startswith(HEAD_PREFIX) else "bert." + k): v.float().contiguous()
        for k, v in state.items()
        if not k.startswith("pooler.")
    }
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in vdir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, out / f.name)
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.exists() else {}
    tok_cfg["model_max_length"] = cfg.max_length_tokens
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    if engine == "optimum":
        export_onnx(model_dir, out)
    global LAST_EXPORT_MAX_ABS_DIFF
    LAST_EXPORT_MAX_ABS_DIFF = _max_abs_diff(model_dir, out, engine)
    return out, LAST_EXPORT_MAX_ABS_DIFF


def _max_abs_diff(model_dir: Path, export_dir: Path, engine: str = "torch") -> float:
    """Raw head scores of modserve's model vs the exported folder (its ONNX file for
    ``engine`` optimum) on a few texts."""
    import torch as t
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from serving.model.load import load_model

    texts = ["hello there", "I will hurt you tomorrow", "a longer comment " * 20]
    ours = load_model(model_dir, "cpu", "float32")
    tok = AutoTokenizer.from_pretrained(str(export_dir))
    theirs = AutoModelForSequenceClassification.from_pretrained(
        str(export_dir), trust_remote_code=True
    ).eval()
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with t.inference_mode():
        a = ours.model(enc["input_ids"], enc["attention_mask"]).float()
        b = t.sigmoid(theirs(**enc).logits.float())
    if engine == "optimum":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(export_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
        feeds = {k: enc[k].numpy() for k in ("input_ids", "attention_mask")}
        b = t.sigmoid(t.from_numpy(sess.run(["logits"], feeds)[0]))
    return float((a - b).abs().max())


def command(model_dir: Path, port: int, engine: str = "torch") -> tuple[list[str], Path]:
    """(argv, working directory) that serve the exported ``model_dir`` with infinity on
    127.0.0.1:``port``, with its ``engine`` (``torch``, or ``optimum``: ONNX Runtime).

    It runs in the export folder with ``--model-id .``: infinity's optimum engine passes the
    ONNX file's path as found by globbing the model id to optimum, which wants it relative
    to the model folder (an absolute id fails with "Could not find any ONNX files")."""
    exe = ensure_venv()
    export_dir, _ = export_model(model_dir, engine)
    return [
        str(exe),
        "v2",
        "--model-id",
        ".",
        "--served-model-name",
        model_dir.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--engine",
        engine,
    ], export_dir

"""``modserve import-hf``: tiny random BERT, RoBERTa, DistilBERT and DeBERTa-v2 sequence
classifiers built from configs (no hub), imported, then served: scores equal transformers'
own forward, own labels on /v1/classify and KServe, mapped ones on /v1/moderations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    RobertaConfig,
)

from serving.config import Settings
from serving.engine.engine import Engine
from serving.engine.metrics import Metrics
from serving.model.load import load_model
from serving.model.repo_config import load_model_config
from tests.helpers import ServerProcess, copy_packaged_tokenizer
from training.import_hf import import_hf, main

pytestmark = pytest.mark.integration

VOCAB = 30522  # the packaged MiniLM (BERT) tokenizer every tiny checkpoint uses
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
CONFIGS = {
    "bert": BertConfig(vocab_size=VOCAB, intermediate_size=37, **SMALL),
    "roberta": RobertaConfig(
        vocab_size=VOCAB, intermediate_size=37, max_position_embeddings=130, pad_token_id=0, **SMALL
    ),
    "distilbert": DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=37),
    "deberta-v2": DebertaV2Config(
        vocab_size=VOCAB, intermediate_size=37, max_position_embeddings=128, **SMALL
    ),
}
MULTI = {"toxic": 0, "insult": 1, "threat": 2}  # multi-label: sigmoid per label
SINGLE = {"ok": 0, "hateful": 1}  # single-label: softmax over labels
TEXTS = [
    "you are a complete idiot",
    "have a nice day",
    "I will break your legs tomorrow",
    "word " * 300,  # longer than the window: chunked, max over chunks
]


def make_checkpoint(kind: str, out: Path, labels: dict[str, int], multi: bool) -> Path:
    cfg = CONFIGS[kind].__class__.from_dict(CONFIGS[kind].to_dict())
    cfg.id2label = {i: w for w, i in labels.items()}
    cfg.label2id = dict(labels)
    cfg.problem_type = "multi_label_classification" if multi else "single_label_classification"
    torch.manual_seed(7)
    model = AutoModelForSequenceClassification.from_config(cfg)
    with torch.no_grad():  # spread the logits so that thresholds flag something
        for p in model.parameters():
            if p.dim() == 2 and p.shape[0] == len(labels):
                p.mul_(25.0)
    model.save_pretrained(str(out))
    copy_packaged_tokenizer(out)
    return out


def transformers_scores(src: Path, texts: list[str], multi: bool) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(str(src)).eval()
    tok = AutoTokenizer.from_pretrained(str(src))
    with torch.inference_mode():
        logits = model(**tok(texts, return_tensors="pt", padding=True)).logits
    return (torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).numpy()


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("multi", [True, False], ids=["multi-label", "single-label"])
async def test_served_scores_equal_transformers(tmp_path: Path, kind: str, multi: bool):
    labels = MULTI if multi else SINGLE
    src = make_checkpoint(kind, tmp_path / "src", labels, multi)
    repo = tmp_path / "repo"
    import_hf(src, "mine", repo, {"toxic": "harassment"} if multi else {"hateful": "hate"})
    cfg = load_model_config(repo / "mine")
    assert cfg.architecture == "hf" and cfg.labels == list(labels)
    assert cfg.activation == ("sigmoid" if multi else "softmax")
    engine = Engine(load_model(repo / "mine"), Settings(model_repo=repo, model="mine"), Metrics())
    await engine.start()
    try:
        result = await engine.classify(TEXTS)
    finally:
        await engine.stop()
    assert result.categories == list(labels)
    ref = transformers_scores(src, TEXTS[:3], multi)  # within the window: one forward each
    np.testing.assert_allclose(result.scores[:3], ref, atol=1e-5, rtol=0)
    assert result.scores[3].shape == (len(labels),)  # the long text: max over its chunks


def test_every_weight_must_be_used(tmp_path: Path):
    src = make_checkpoint("bert", tmp_path / "src", MULTI, True)
    weights = load_file(str(src / "model.safetensors"))
    save_file({**weights, "extra.dense.weight": torch.zeros(2, 2)}, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match=r"extra\.dense\.weight"):
        import_hf(src, "mine", tmp_path / "repo")
    weights.pop("classifier.weight")  # the head would be random: refused too
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match=r"classifier\.weight"):
        import_hf(src, "mine", tmp_path / "repo")
    assert not (tmp_path / "repo" / "mine" / "1").exists()


def test_import_checks_its_scores_against_transformers(tmp_path: Path, monkeypatch):
    """A model that modserve would serve differently from transformers' own forward (here:
    every score off by 1e-3, as a dropped pooler or a wrong padding would do) is refused and
    nothing is written."""
    from serving.model.load import HFSequenceClassifier

    src = make_checkpoint("bert", tmp_path / "src", MULTI, True)
    forward = HFSequenceClassifier.forward
    monkeypatch.setattr(HFSequenceClassifier, "forward", lambda *a: forward(*a) + 1e-3)
    with pytest.raises(ValueError, match="differ from transformers"):
        import_hf(src, "mine", tmp_path / "repo")
    assert not (tmp_path / "repo" / "mine").exists()


def test_command_line_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    src = make_checkpoint("distilbert", tmp_path / "src", MULTI, True)
    repo = str(tmp_path / "repo")
    assert main([str(src), "--name", "m", "--model-repo", repo, "--label-map", "rude=hate"]) == 1
    assert "'rude' is not a label" in capsys.readouterr().out
    assert main([str(src), "--name", "m", "--model-repo", repo, "--label-map", "toxic=mean"]) == 1
    assert "not an OpenAI category" in capsys.readouterr().out
    assert main([str(src), "--name", "m", "--model-repo", repo]) == 0


@pytest.fixture(scope="module")
def imported_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("imported")
    src = make_checkpoint("roberta", tmp / "src", MULTI, True)
    import_hf(src, "mine", tmp / "repo", {"toxic": "harassment", "threat": "violence"})
    s = ServerProcess(tmp / "repo", model="mine")
    s.wait_ready()
    s.src = src  # type: ignore[attr-defined]
    yield s
    s.stop()


def test_classify_route_answers_the_models_own_labels(imported_server: ServerProcess):
    r = httpx.post(imported_server.base + "/v1/classify", json={"input": TEXTS[:2]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "mine" and len(body["results"]) == 2
    ref = transformers_scores(imported_server.src, TEXTS[:2], True)  # type: ignore[attr-defined]
    for res, row in zip(body["results"], ref, strict=True):
        assert list(res["labels"]) == list(MULTI)
        np.testing.assert_allclose(list(res["labels"].values()), row, atol=1e-5)
        assert res["flagged_labels"] == [w for w, s in res["labels"].items() if s >= 0.5]
        assert res["flagged"] == bool(res["flagged_labels"])
    bad = httpx.post(imported_server.base + "/v1/classify", json={"input": []})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_moderations_answer_mapped_labels_and_name_the_rest_unscored(
    imported_server: ServerProcess,
):
    client = openai.OpenAI(base_url=imported_server.base + "/v1", api_key="x", max_retries=0)
    raw = client.moderations.with_raw_response.create(input=TEXTS[2], model="mine")
    result = raw.parse().results[0]
    own = httpx.post(imported_server.base + "/v1/classify", json={"input": TEXTS[2]}).json()
    labels = own["results"][0]["labels"]
    scores = result.category_scores.model_dump(by_alias=True)
    assert scores["harassment"] == pytest.approx(labels["toxic"], abs=1e-6)
    assert scores["violence"] == pytest.approx(labels["threat"], abs=1e-6)
    unscored = set(raw.headers["x-unscored-categories"].split(","))
    assert "hate" in unscored and "harassment" not in unscored and "violence" not in unscored
    assert scores["hate"] == 0.0 and result.categories.hate is False
    models = {m["id"]: m for m in httpx.get(imported_server.base + "/v1/models").json()["data"]}
    assert models["mine"]["categories"] == ["harassment", "violence"]
    assert models["mine"]["labels"] == list(MULTI)


def test_kserve_infer_returns_every_own_label(imported_server: ServerProcess):
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
    r = httpx.post(imported_server.base + "/v2/models/mine/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["SCORES"]["shape"] == [2, len(MULTI)]
    meta = httpx.get(imported_server.base + "/v2/models/mine").json()
    assert json.dumps(meta)  # metadata answers for an imported model too

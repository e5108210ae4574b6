"""The registry-ready model folder: huggingface_hub's sharded safetensors writer (index + shards) that
`from_pretrained` loads, and a model card whose front matter huggingface_hub parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny import make_tiny_model
from worker.engine.artifacts import base_hub_id, save_registry_model, write_model_card
from worker.engine.config import EditConfig
from worker.engine.delta import LayerEdit, SparseDelta
from worker.engine.models import load_model
from worker.engine.result import EditResult, LanguageResult


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    path = make_tiny_model(tmp_path_factory.mktemp("m") / "tiny", family="qwen2")
    return load_model(str(path), device="cpu")


def test_sharded_save_loads(tiny, tmp_path: Path) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM

    out = tmp_path / "model"
    save_registry_model(tiny, out, max_shard_size="100KB")  # small shards: several files and an index
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, t in tiny.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], t), name

    single = tmp_path / "single"
    save_registry_model(tiny, single)  # 5 GB shards: one file, no index
    assert (single / "model.safetensors").is_file() and not (single / "model.safetensors.index.json").exists()


def test_model_card_parses(tiny, tmp_path: Path) -> None:  # noqa: ANN001
    from huggingface_hub import ModelCard

    (Path(tiny.path) / "lingua_edit_source.json").write_text(json.dumps({"source": "org/base-model"}))
    assert base_hub_id(tiny) == "org/base-model"
    config = EditConfig(model="tiny", target_langs=["zh", "sw"], base_revision="v1.2", layers=[1])
    result = EditResult(
        languages=[LanguageResult("en", 4, 0.25, 0.0, 0.75, 1.0),
                   LanguageResult("zh", 4, 0.75, 0.25, 0.25, 0.5, degenerate_after=0.25, harmless_n=3,
                                  harmless_refusal_before=0.0, harmless_refusal_after=1 / 3, borderline_n=2,
                                  borderline_refusal_before=0.5, borderline_refusal_after=0.5)],
        utility={"kl_mean": 0.0123}, neurons={}, timings={}, peak_memory_mb={}, artifacts={},
        warnings=["search winner: gated L1 uniform ×1"], method="search",
    )
    edit = LayerEdit(
        layer=1, module="gate", indices=torch.tensor([0, 3, 5]), delta=torch.zeros(3, 8), original=torch.zeros(3, 8)
    )
    path = write_model_card(tmp_path, tiny, config, result, SparseDelta([edit]), delta_bytes=1234)
    card = ModelCard.load(path)
    assert card.data.base_model == "org/base-model" and card.data.base_model_relation == "finetune"
    assert card.data.language == ["en", "zh", "sw"] and card.data.license == "other"
    assert card.data.base_model_revision == "v1.2"
    assert "lingua-edit" in card.data.tags
    # over-refusal is the harmless prompts' refusal, not the harmful prompts' (0.25 -> 0.5 here)
    assert "| zh | 4 | 75% → 25% | 0% → 25% | 3 | 0% → 33% | 2 | 50% → 50% |" in card.text
    assert "| en | 4 | 25% → 0% | 0% → 0% | 0 | – → – | 0 | – → – |" in card.text
    assert "**gated L1 uniform ×1**" in card.text
    assert "`search_gains` | `[1.0, 2.0, 4.0]`" in card.text and "`judge_url`" not in card.text
    assert "`rank`" in card.text and "24 weights changed (1,234 bytes" in card.text
    assert "| 1 | gate | 3 |" in card.text and "revision `v1.2`" in card.text


def test_revision_refused_for_local_models(tiny) -> None:  # noqa: ANN001
    from worker.engine.errors import UserError

    with pytest.raises(UserError) as e:
        load_model(tiny.path, device="cpu", revision="main")
    assert e.value.param == "base_revision"


def test_destination_layout(tmp_path: Path) -> None:
    from worker.destination import layout

    out = tmp_path / "out"
    for name in ("model/README.md", "model/config.json", "model/model.safetensors.index.json",
                 "model/model-00001-of-00002.safetensors", "delta.safetensors", "manifest.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    names = [rel for rel, _ in layout(out)]
    assert set(names) == {"README.md", "config.json", "model.safetensors.index.json",
                          "model-00001-of-00002.safetensors", "delta.safetensors", "manifest.json"}
    assert names[-2:] == ["README.md", "model.safetensors.index.json"]  # index and card appear last


"""Every edit method of `--method paper` (each closed-form module and each registered method of
worker/engine/methods) at each positions setting it accepts, and `layers="auto"`, through the same
round-trip checks on a tiny model (PEFT's TEST_CASES style): the saved model is the base plus the delta,
the delta touches only the rows it names, reverting restores the base bit for bit, and the loaded model the
caller passed in is left as it was. A method added to the registry is picked up here without a new test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from worker.engine.config import EditConfig
from worker.engine.delta import apply_delta, load_delta, revert_delta
from worker.engine.methods import CLOSED_FORM_MODULES, LAYER_METHODS
from worker.engine.models import load_model, weights_fingerprint
from worker.engine.pipeline import run_edit

IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])
WEIGHT_MODULES = {"gate": ("gate",), "up": ("up",), "gate+up": ("gate", "up"), "down": ("down",)}


def _cases() -> list[tuple[str, str, object]]:
    """(module, positions, layers): every module at template positions, the others where they apply."""
    cases: list[tuple[str, str, object]] = [(m, "template", [2]) for m in (*CLOSED_FORM_MODULES, *LAYER_METHODS)]
    cases += [("gate", "last", [1]), ("gate", "all", [1]), ("down", "last", [2])]
    cases += [(m, "last", [1]) for m, spec in LAYER_METHODS.items() if spec.fixed_positions]
    cases += [("gate", "template", "auto")]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def loaded(tiny_qwen2: Path):  # noqa: ANN201
    return load_model(str(tiny_qwen2))


@pytest.mark.parametrize(("module", "positions", "layers"), CASES, ids=[f"{m}-{p}-{ly}" for m, p, ly in CASES])
def test_round_trip(module: str, positions: str, layers: object, loaded, tiny_qwen2: Path, tmp_path: Path) -> None:
    base_hash = weights_fingerprint(loaded.model)
    cfg = EditConfig(model=str(tiny_qwen2), method="paper", layers=layers, module=module, positions=positions,
                     tau_z=0.5, tau_d=0.3, max_new_tokens=2, max_eval_prompts=1, max_harmless_eval=1,
                     second_test_prompts=0, target_langs=["zh"], screen_prompts=2)
    out = tmp_path / "job"
    run_edit(cfg, out, loaded=loaded)
    assert weights_fingerprint(loaded.model) == base_hash  # the caller's model is reverted

    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["config"]["module"], manifest["config"]["positions"]) == (module, positions)
    delta = load_delta(out / "delta.safetensors")
    assert delta.edits, "no neuron was edited"
    edited_layers = {e.layer for e in delta.edits}
    if layers != "auto":
        assert edited_layers == set(layers)  # type: ignore[arg-type]
    touched = {e.module for e in delta.edits}
    if layers == "auto" and module == "gate":  # the layer screen also tries up_proj (stages/select.py: auto_select)
        assert touched in ({"gate"}, {"up"})
    else:
        assert touched == ({"gate", "up", "down"} if module in LAYER_METHODS else set(WEIGHT_MODULES[module]))

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    saved = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    apply_delta(base, delta)
    names = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    after = base.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed == {f"model.layers.{e.layer}.mlp.{names[e.module]}.weight" for e in delta.edits}
    for e in delta.edits:  # only the named neurons' rows (gate/up) or columns (down) move
        key = f"model.layers.{e.layer}.mlp.{names[e.module]}.weight"
        moved = (after[key] != before[key]).any(dim=0 if e.module == "down" else 1).nonzero().flatten()
        assert set(moved.tolist()) <= set(e.indices.tolist()), e.key
    with torch.no_grad():
        assert torch.equal(base(IDS).logits, saved(IDS).logits)  # saved model == base + delta
    revert_delta(base, delta)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())

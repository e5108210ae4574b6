"""The sparse delta: apply/revert bit-for-bit, file round trip, base-model checks (tiny Qwen2 and Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from tests.tiny import make_tiny_model
from worker.engine.delta import (
    DeltaMismatchError,
    LayerEdit,
    SparseDelta,
    apply_delta,
    delta_num_params,
    load_delta,
    make_layer_edit,
    neuron_rows,
    revert_delta,
    save_delta,
)
from worker.engine.errors import UserError

FAMILIES = ["qwen2", "llama"]
D, F = 64, 256  # tiny.py defaults: hidden, intermediate


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-other"), "qwen2", seed=1)


def _load(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path).eval()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a
    )


def _make_delta(model: torch.nn.Module, seed: int = 0) -> SparseDelta:
    """Edits on gate, up and down (two layers) with random Δ of realistic size."""
    g = torch.Generator().manual_seed(seed)
    edits = []
    for layer, module, k in ((1, "gate", 5), (2, "up", 3), (2, "down", 4), (3, "gate", 1)):
        idx = torch.randperm(F, generator=g)[:k].sort().values
        delta_dk = torch.randn(D, k, generator=g, dtype=torch.float64) * 0.05
        edits.append(make_layer_edit(model, layer, module, idx, delta_dk))
    return SparseDelta(edits=edits, metadata={"purpose": "test", "rank": "32"})


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_make_layer_edit_shapes_and_rows(tiny: Path) -> None:
    model = _load(tiny)
    delta = _make_delta(model)
    for e in delta.edits:
        assert e.delta.dtype == torch.float32 and e.delta.shape == (e.indices.numel(), D)
        assert e.original.dtype == torch.float32 and e.original.shape == e.delta.shape
    down = delta.edits[2]
    w = model.model.layers[2].mlp.down_proj.weight
    assert torch.equal(down.original, w[:, down.indices].T)
    gate = delta.edits[0]
    assert torch.equal(gate.original, model.model.layers[1].mlp.gate_proj.weight[gate.indices])
    assert delta_num_params(delta) == (5 + 3 + 4 + 1) * D


def test_apply_then_revert_is_bit_exact(tiny: Path) -> None:
    model = _load(tiny)
    base = _state(model)
    delta = _make_delta(model)
    apply_delta(model, delta)
    edited = _state(model)
    changed = {k for k in base if not torch.equal(base[k], edited[k])}
    assert changed == {
        "model.layers.1.mlp.gate_proj.weight", "model.layers.2.mlp.up_proj.weight",
        "model.layers.2.mlp.down_proj.weight", "model.layers.3.mlp.gate_proj.weight",
    }
    # only the selected rows/columns moved, by Δ
    gate = delta.edits[0]
    w = edited["model.layers.1.mlp.gate_proj.weight"]
    torch.testing.assert_close(w[gate.indices] - gate.original, gate.delta, rtol=0, atol=1e-6)
    untouched = torch.ones(F, dtype=torch.bool)
    untouched[gate.indices] = False
    assert torch.equal(w[untouched], base["model.layers.1.mlp.gate_proj.weight"][untouched])
    down = delta.edits[2]
    wd = edited["model.layers.2.mlp.down_proj.weight"]
    torch.testing.assert_close(wd[:, down.indices].T - down.original, down.delta, rtol=0, atol=1e-6)
    revert_delta(model, delta)
    assert _bit_equal(_state(model), base)


def test_save_load_apply_equals_in_memory_edit(tiny: Path, tmp_path: Path) -> None:
    model = _load(tiny)
    delta = _make_delta(model)
    apply_delta(model, delta)
    expected = _logits(model)
    out = save_delta(delta, tmp_path / "sub" / "delta.safetensors", base_fingerprint="sha256:abc")
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    loaded = load_delta(out)
    assert loaded.metadata == {"purpose": "test", "rank": "32", "base_fingerprint": "sha256:abc"}
    assert [(e.layer, e.module) for e in loaded.edits] == [(e.layer, e.module) for e in delta.edits]
    fresh = _load(tiny)
    base_logits = _logits(fresh)
    apply_delta(fresh, loaded)
    assert _bit_equal(_state(fresh), _state(model))
    assert torch.equal(_logits(fresh), expected)
    assert not torch.equal(base_logits, expected)
    revert_delta(fresh, loaded)
    assert torch.equal(_logits(fresh), base_logits)


def test_mismatches_are_refused(tiny: Path, other_base: Path) -> None:
    model = _load(tiny)
    delta = _make_delta(model)
    with pytest.raises(DeltaMismatchError, match="does not carry"):
        revert_delta(model, delta)  # not applied yet
    apply_delta(model, delta)
    with pytest.raises(DeltaMismatchError, match="layer 1 module gate.*not made for this base model"):
        apply_delta(model, delta)  # twice
    other = _load(other_base)
    before = _state(other)
    with pytest.raises(DeltaMismatchError, match="not made for this base model"):
        apply_delta(other, delta)
    assert _bit_equal(_state(other), before)
    assert issubclass(DeltaMismatchError, UserError)


def test_apply_and_revert_are_all_or_nothing(tiny: Path) -> None:
    model = _load(tiny)
    base = _state(model)
    delta = _make_delta(model)
    last = delta.edits[-1]
    bad_last = LayerEdit(layer=last.layer, module=last.module, indices=last.indices, delta=last.delta,
                         original=last.original + 1.0)
    with pytest.raises(DeltaMismatchError, match="layer 3 module gate"):
        apply_delta(model, SparseDelta(edits=[*delta.edits[:-1], bad_last]))
    assert _bit_equal(_state(model), base)  # the three edits written before the refusal were undone
    apply_delta(model, delta)
    edited = _state(model)
    bad_first = LayerEdit(layer=1, module="gate", indices=delta.edits[0].indices,
                          delta=delta.edits[0].delta * 2, original=delta.edits[0].original)
    with pytest.raises(DeltaMismatchError, match="does not carry"):
        revert_delta(model, SparseDelta(edits=[bad_first, *delta.edits[1:]]))
    assert _bit_equal(_state(model), edited)


def test_dtype_mismatch_and_bf16_round_trip(tiny: Path) -> None:
    model = _load(tiny)
    delta = _make_delta(model)
    half = _load(tiny).to(torch.bfloat16)
    with pytest.raises(DeltaMismatchError, match="bfloat16"):
        apply_delta(half, delta)
    base = {k: v.clone() for k, v in half.state_dict().items()}
    d16 = _make_delta(half)
    assert d16.edits[0].original.dtype == torch.bfloat16
    apply_delta(half, d16)
    revert_delta(half, d16)
    after = half.state_dict()
    assert all(torch.equal(base[k].view(torch.int16), after[k].view(torch.int16)) for k in base)


def test_bad_indices_and_shapes_rejected(tiny: Path) -> None:
    model = _load(tiny)
    dk = torch.zeros(D, 2)
    for idx in (torch.tensor([0, F]), torch.tensor([-1, 3]), torch.tensor([4, 4]), torch.tensor([0.0, 1.0])):
        with pytest.raises(UserError) as exc:
            make_layer_edit(model, 0, "gate", idx, dk)
        assert exc.value.param == "indices"
    with pytest.raises(UserError, match="out of range"):
        make_layer_edit(model, 99, "gate", torch.tensor([0, 1]), dk)
    with pytest.raises(UserError, match="module"):
        make_layer_edit(model, 0, "q_proj", torch.tensor([0, 1]), dk)
    with pytest.raises(UserError, match=r"\[d, k\]"):
        make_layer_edit(model, 0, "up", torch.tensor([0, 1]), torch.zeros(2, D))
    # a hand-made edit with an out-of-range index is refused at apply time too
    bad = LayerEdit(layer=0, module="down", indices=torch.tensor([F + 3]),
                    delta=torch.zeros(1, D), original=torch.zeros(1, D))
    with pytest.raises(UserError, match="out of range"):
        apply_delta(model, SparseDelta(edits=[bad]))
    with pytest.raises(UserError, match="neuron indices"):
        neuron_rows(model, 0, "down", torch.tensor([F]))


def test_repeated_layer_module_round_trips(tiny: Path, tmp_path: Path) -> None:
    model = _load(tiny)
    base = _state(model)
    first = make_layer_edit(model, 1, "gate", torch.tensor([3, 9]), torch.full((D, 2), 0.1))
    apply_delta(model, SparseDelta([first]))
    second = make_layer_edit(model, 1, "gate", torch.tensor([9, 11]), torch.full((D, 2), -0.2))
    apply_delta(model, SparseDelta([second]))
    edited = _state(model)
    both = SparseDelta([first, second])
    path = save_delta(both, tmp_path / "d.safetensors")
    loaded = load_delta(path)
    fresh = _load(tiny)
    apply_delta(fresh, loaded)
    assert _bit_equal(_state(fresh), edited)
    revert_delta(fresh, loaded)
    assert _bit_equal(_state(fresh), base)


def test_corrupt_and_foreign_files(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such"):
        load_delta(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_delta(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(UserError, match="not a lingua-edit delta"):
        load_delta(foreign)
    model = _load(tiny)
    good = save_delta(_make_delta(model), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError):
        load_delta(truncated)
    missing = tmp_path / "missing-tensor.safetensors"
    meta = {"format": "lingua-edit-sparse-delta", "format_version": "1",
            "edits": json.dumps([{"key": "layers.0.gate", "layer": 0, "module": "gate"}])}
    save_file({"layers.0.gate.indices": torch.tensor([1])}, missing, metadata=meta)
    with pytest.raises(UserError, match="missing"):
        load_delta(missing)
    future = tmp_path / "future.safetensors"
    save_file({"x": torch.zeros(1)}, future, metadata={**meta, "format_version": "99"})
    with pytest.raises(UserError, match="version"):
        load_delta(future)

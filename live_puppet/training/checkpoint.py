"""Checkpoints as safetensors files, and the user's VGG weight files for the content loss.

A checkpoint holds tensors under the prefixes `generator.`, `embedder.`, `discriminator.`,
`optimizer_g.`, `optimizer_d.` and the tensors `e_hat` and `psi`; its metadata holds a format tag,
the ModelConfig as JSON, the step, the kind ("meta" for a meta-learned model, "portrait" for a
per-portrait fine-tuned one), the training videos (one per discriminator W column), free-form
extras as JSON, and the sha256 of the tensors (names, types, shapes and bytes), so that a byte
changed on disk or in a copy is refused rather than rendered as a garbled face. Nothing is ever
unpickled.

A per-portrait checkpoint has the fine-tuned generator, ê and the fine-tuned ψ; render with
`generator(sketch, checkpoint.psi)` (ψ is optimised directly in fine-tuning, so it is no longer
P·ê).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from live_puppet.errors import UserError, usual_permissions
from live_puppet.model import Discriminator, Embedder, Generator, ModelConfig
from live_puppet.model.losses import VGGFeatures

FORMAT_TAG = "live-puppet/talking-head"
FORMAT_VERSION = "1"


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds, as ready-to-use modules (on the CPU, in eval mode)."""

    config: ModelConfig
    generator: Generator
    embedder: Embedder | None = None
    discriminator: Discriminator | None = None
    e_hat: Tensor | None = None  # [1, embed_dim]; per-portrait checkpoints only
    psi: Tensor | None = None  # [1, generator.psi_dim]; per-portrait checkpoints only
    step: int = 0
    kind: str = "meta"  # "meta" (meta-learned) or "portrait" (fine-tuned on one face)
    videos: list[str] = field(default_factory=list)  # training clip ids, one per column of D's W
    extra: dict = field(default_factory=dict)  # free-form JSON-able facts (crop box, source, ...)
    optimizer_g: dict | None = None  # torch optimizer state_dict, for resuming
    optimizer_d: dict | None = None


def save_checkpoint(path: str | os.PathLike, ck: Checkpoint) -> Path:
    """Write `ck` to `path` atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, Tensor] = {}
    for prefix, module in (("generator", ck.generator), ("embedder", ck.embedder),
                           ("discriminator", ck.discriminator)):
        if module is not None:
            for name, t in module.state_dict().items():
                tensors[f"{prefix}.{name}"] = t
    for name, t in (("e_hat", ck.e_hat), ("psi", ck.psi)):
        if t is not None:
            tensors[name] = t
    groups = {}
    for prefix, opt in (("optimizer_g", ck.optimizer_g), ("optimizer_d", ck.optimizer_d)):
        if opt is None:
            continue
        for index, state in opt["state"].items():
            for key, t in state.items():
                tensors[f"{prefix}.{index}.{key}"] = torch.as_tensor(t)
        groups[prefix] = opt["param_groups"]
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "config": ck.config.to_json(),
        "step": str(int(ck.step)),
        "kind": ck.kind,
        "videos": json.dumps(list(ck.videos)),
        "extra": json.dumps(ck.extra),
        "optimizer_groups": json.dumps(groups),
        "sha256": tensors_sha256(tensors),
    }
    from safetensors import SafetensorError

    tmp = path.with_name(path.name + ".tmp")
    try:
        with interrupt_deferred():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=meta)
            usual_permissions(tmp)
            os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        _remove(tmp)
        reason = getattr(exc, "strerror", None) or str(exc)
        if path.is_dir():
            reason = "it is a folder"
        raise UserError(f"Could not write the checkpoint '{path}' ({reason}); choose a file path "
                        f"in a folder you can write.") from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 of named tensors: each name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


@contextlib.contextmanager
def interrupt_deferred():
    """Ctrl-C while a checkpoint is written takes effect once it is complete (a half-written
    checkpoint would be lost work), and says so at once; while already stopping for a Ctrl-C,
    another one only waits for the file."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # not ours to change (another thread, an ignored SIGINT, a handler set elsewhere)
        return
    handling = sys.exc_info()[0] is KeyboardInterrupt  # saving because of a first Ctrl-C
    pressed = []

    def hold(signum, frame):
        pressed.append(signum)
        print("live-puppet: finishing writing the checkpoint first ...", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed and not handling:  # (when already stopping, the caller goes on to say where it saved)
        raise KeyboardInterrupt


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"'{path}' {what}; pass a checkpoint written by `live-puppet train` or "
                     f"`live-puppet finetune`.")


def checkpoint_file(path: str | os.PathLike) -> Path:
    """`path` as a Path if it is a file; a folder or a missing path raises UserError."""
    path = Path(path).expanduser()
    if path.is_dir():
        hint = " (a `train` run folder keeps it as last.safetensors)" if \
            (path / "last.safetensors").is_file() else ""
        raise UserError(f"The checkpoint '{path}' is a folder; pass the .safetensors file "
                        f"itself{hint}.")
    if not path.is_file():
        raise UserError(f"The checkpoint '{path}' does not exist; pass the path of a .safetensors "
                        f"file written by `live-puppet train` or `live-puppet finetune`.")
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint; a missing, corrupt, truncated or foreign file raises UserError."""
    from safetensors import safe_open

    path = checkpoint_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        raise _bad(path, "is not a readable safetensors file (corrupt or truncated)") from None
    if meta.get("format") != FORMAT_TAG:
        raise _bad(path, "is a safetensors file but not a live-puppet model checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"'{path}' is a live-puppet checkpoint of format version "
                        f"{meta.get('format_version')}, but this version reads {FORMAT_VERSION}; "
                        f"use the live-puppet version that wrote it or retrain.")
    if "sha256" in meta and tensors_sha256(tensors) != meta["sha256"]:  # (older files have none)
        raise _bad(path, "is damaged: its weights no longer match the checksum written with them "
                         "(a changed byte on disk or in a copy)")
    try:
        config = ModelConfig.from_json(meta["config"])
        videos = json.loads(meta.get("videos", "[]"))
        extra = json.loads(meta.get("extra", "{}"))
        groups = json.loads(meta.get("optimizer_groups", "{}"))
        step = int(meta.get("step", "0"))
        kind = meta.get("kind", "meta")
        ck = Checkpoint(config=config, generator=Generator(config), step=step, kind=kind,
                        videos=videos, extra=extra)
        _load_module(ck.generator, tensors, "generator")
        if _has(tensors, "embedder"):
            ck.embedder = Embedder(config)
            _load_module(ck.embedder, tensors, "embedder")
        if _has(tensors, "discriminator"):
            ck.discriminator = Discriminator(config, tensors["discriminator.W"].shape[1])
            _load_module(ck.discriminator, tensors, "discriminator")
        ck.e_hat = tensors.get("e_hat")
        ck.psi = tensors.get("psi")
        ck.optimizer_g = _optimizer_state(tensors, "optimizer_g", groups)
        ck.optimizer_d = _optimizer_state(tensors, "optimizer_d", groups)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise _bad(path, f"is damaged or does not match its own config ({type(exc).__name__})") \
            from None
    broken = first_non_finite(tensors)
    if broken is not None:
        raise UserError(f"'{path}' holds NaN or infinite weights ({broken}), so it would render "
                        f"a blank face: its training diverged or the file is damaged; use an "
                        f"earlier checkpoint, or train again with lower --lr-g/--lr-d.")
    for m in (ck.generator, ck.embedder, ck.discriminator):
        if m is not None:
            m.eval()
    return ck


def first_non_finite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first model tensor (optimiser state aside) holding a NaN or infinity."""
    for name, t in tensors.items():
        if name.startswith(("optimizer_g.", "optimizer_d.")) or not t.is_floating_point():
            continue
        if not bool(torch.isfinite(t).all()):
            return name
    return None


def _has(tensors: dict, prefix: str) -> bool:
    return any(k.startswith(prefix + ".") for k in tensors)


def _load_module(module: nn.Module, tensors: dict, prefix: str) -> None:
    n = len(prefix) + 1
    state = {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    module.load_state_dict(state, strict=True)


def _optimizer_state(tensors: dict, prefix: str, groups: dict) -> dict | None:
    if prefix not in groups:
        return None
    state: dict[int, dict[str, Tensor]] = {}
    pattern = re.compile(rf"^{prefix}\.(\d+)\.(.+)$")
    for k, v in tensors.items():
        m = pattern.match(k)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = v
    return {"state": state, "param_groups": groups[prefix]}


# --- VGG weights for the content loss --------------------------------------------------------------

def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_weight_file(path: Path) -> dict[str, Tensor]:
    """Tensors of a .safetensors file or of a torch state-dict file (read with weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError("not a state dict")
    return {k: v for k, v in data.items() if isinstance(v, Tensor)}


def load_vgg_weights(path: str | os.PathLike, kind: str) -> VGGFeatures:
    """A frozen VGG19 (`kind="vgg19"`, torchvision's ImageNet weights) or VGGFace (`"vggface"`,
    the Oxford VGG-Face VGG16) from a weight file the user named.

    The 3x3 convolutions are taken in the natural order of their names (features.0, features.2,
    ... or conv1_1, conv1_2, ...), so torchvision-style and Caffe-port state dicts both load.
    """
    path = Path(path).expanduser()
    flag = "--vgg19" if kind == "vgg19" else "--vggface"
    if not path.is_file():
        raise UserError(f"The {kind} weight file '{path}' does not exist; pass an existing file "
                        f"to {flag} or leave the flag out to train without it.")
    net = VGGFeatures.vgg19() if kind == "vgg19" else VGGFeatures.vggface()
    try:
        tensors = read_weight_file(path)
        convs = []
        for name in sorted(tensors, key=_natural_key):
            t = tensors[name]
            if name.endswith("weight") and t.ndim == 4 and t.shape[-2:] == (3, 3):
                bias = tensors.get(name[: -len("weight")] + "bias")
                if bias is None:
                    raise ValueError(f"{name} has no bias")
                convs.append((t.float(), bias.float()))
        net.load_convs(convs)
    except Exception as exc:
        raise UserError(f"'{path}' could not be read as {kind} weights ({exc}); pass a "
                        f"{'torchvision VGG19' if kind == 'vgg19' else 'VGG-Face (VGG16)'} "
                        f"state dict (.pth or .safetensors) to {flag}.") from None
    return net

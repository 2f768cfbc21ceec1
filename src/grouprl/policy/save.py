"""Save a policy (model + tokenizer) with ``save_pretrained``, without transformers' progress bars.

``PreTrainedModel.save_pretrained`` draws a tqdm bar ("Writing model shards") for every save, even
of a one-shard tiny model: a run that writes a warm start, a behaviour-cloning result and a few
checkpoints fills its log with them. transformers creates its bars through one process-wide
factory, ``transformers.utils.logging.tqdm``; :func:`no_progress_bars` silences it for the
duration of a ``with`` block only:

* transformers with ``set_tqdm_hook`` (5.x): a hook that adds ``disable=True`` to every bar, then
  calls the hook that was installed before (if any); on exit the previous hook is put back. Only
  transformers' bars are affected; huggingface_hub's settings (per-group states, the
  ``HF_HUB_DISABLE_PROGRESS_BARS`` variable) are never touched;
* older transformers (no hook): ``disable_progress_bar()`` on entry and
  ``enable_progress_bar()`` on exit when the bars were on (nothing is done when they were off).

Either way the state is process-wide while the block runs: a transformers bar started by another
thread is hidden too. grouprl saves from the main thread (rank 0), so this only affects the save.

Crash safety (:func:`save_policy`): every written file is fsynced; a directory that does not
exist yet is written into a temp folder beside it (``.tmp-<name>-<pid>``) and renamed into place,
so a crash never leaves a half-written model at that path. (A run's ``warm_start`` and
``base_model`` also carry a checksum manifest: :mod:`grouprl.train.saved_model`.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from grouprl.fsync import fsync_path

__all__ = ["no_progress_bars", "save_policy"]


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Context manager: transformers' tqdm progress bars are off inside the block.

    The previous state (tqdm hook, or the on/off switch on older transformers) is restored on
    exit, also when the block raises. See the module docstring.
    """
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is not None:
        previous = None

        def quiet(factory, args, kwargs):
            kwargs = {**kwargs, "disable": True}
            return factory(*args, **kwargs) if previous is None else \
                previous(factory, args, kwargs)

        previous = set_hook(quiet)
        try:
            yield
        finally:
            set_hook(previous)
        return
    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _stamps(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (st.st_mtime_ns, st.st_size) for p in root.rglob("*")
            if (st := p.stat()) and p.is_file()}


def _write(model: Any, tokenizer: Any, out: Path, kwargs: dict[str, Any]) -> None:
    """Save into ``out``; fsync the files the save wrote (not the folder's other files), then
    the folders, deepest first."""
    before = _stamps(out)
    with no_progress_bars():
        model.save_pretrained(out, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    written = [p for p, stamp in _stamps(out).items() if before.get(p) != stamp]
    folders = {q for p in written for q in p.parents if q == out or out in q.parents}
    for path in [*written, *sorted(folders, key=lambda q: -len(q.parts))]:
        fsync_path(path)


def save_policy(model: Any, tokenizer: Any, directory: str | Path, **kwargs: Any) -> Path:
    """``model.save_pretrained(directory, **kwargs)`` and ``tokenizer.save_pretrained(directory)``
    with no progress bar, every file fsynced; returns the directory.

    A ``directory`` that does not exist yet is written atomically (a temp folder beside it,
    renamed into place: after a crash it is absent, never half-written); into an existing one
    the files are written in place (its other files are kept). ``model`` is a transformers
    model or a peft model (an adapter directory is written then); ``tokenizer`` may be None to
    save the model alone. ``load_policy(directory)`` reloads a full model saved this way.
    """
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"model: expected a Hugging Face model (with save_pretrained), got "
                        f"{type(model).__name__}")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer: expected a Hugging Face tokenizer (with save_pretrained) or "
                        f"None, got {type(tokenizer).__name__}")
    if not isinstance(directory, (str, Path)):
        raise ValueError(f"directory: expected a path, got {type(directory).__name__}")
    out = Path(directory).expanduser()
    if out.exists():
        _write(model, tokenizer, out, kwargs)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write(model, tokenizer, tmp, kwargs)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(out.parent)
    return out

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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

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


def save_policy(model: Any, tokenizer: Any, directory: str | Path, **kwargs: Any) -> Path:
    """``model.save_pretrained(directory, **kwargs)`` and ``tokenizer.save_pretrained(directory)``
    with no progress bar; returns the directory (created when missing).

    ``model`` is a transformers model or a peft model (an adapter directory is written then);
    ``tokenizer`` may be None to save the model alone. ``load_policy(directory)`` reloads a
    full model saved this way.
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
    out.mkdir(parents=True, exist_ok=True)
    with no_progress_bars():
        model.save_pretrained(out, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    return out

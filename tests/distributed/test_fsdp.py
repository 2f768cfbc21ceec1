"""FSDP2 on CPU ranks (spec-scale-out §3 T4, T5): a checkpoint of a sharded model is written
by rank 0 in the one-process format (same tensor names and safetensors metadata; a plain model
loads it strictly), a fresh sharded model resumes from it with every tensor equal and its next
step equals the uninterrupted model's exactly; generation inside one unshard runs 5 decoding
steps on rank 0 and 17 on rank 1 without hanging and equals the unsharded model's tokens."""

from __future__ import annotations

import json

from .torchrun import ROOT, torchrun


def test_fsdp2_checkpoint_resume_and_generation(tmp_path):
    out = tmp_path / "fsdp.json"
    torchrun([str(ROOT / "tests/distributed/worker_fsdp.py"), "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["generation_equal"] == [True, True]
    assert r["loaded_equal"] is True
    assert r["next_step_diff"] == 0.0
    assert r["same_format"] is True

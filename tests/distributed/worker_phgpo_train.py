"""Run under ``torchrun --nproc_per_node=2`` by test_phgpo_dp.py (not collected by pytest):
``grouprl train ARGV`` (``mode: phgpo``) unchanged, recording on every rank a digest of the
policy at every checkpoint and of the pheromone store and elite buffer after every epoch
(``RUN_DIR.rank{r}.json``)."""

from __future__ import annotations

import hashlib
import json
import os
import sys

from worker_train import digest  # one weights digest for every worker

import grouprl.train.parallel as parallel
import grouprl.train.tool_learner as tool_learner
from grouprl.cli import main
from grouprl.train.tool_stages import to_plain

RECORD: dict[str, list] = {"digests": [], "stores": []}


def state_digest(learner) -> str:
    state = {"store": to_plain(learner.store.state_dict()), "elite": learner.elite.state_dict()}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def main_worker(argv: list[str]) -> int:
    run_dir = argv[argv.index("--resume") + 1] if "--resume" in argv else \
        next(a.split("=", 1)[1] for a in argv if a.startswith("run_dir="))
    rank = int(os.environ["RANK"])
    save, rl_epoch = parallel.ParallelModel.save, tool_learner.ToolLearner.rl_epoch

    def recording_save(self, model, optimizer, generators, write):
        RECORD["digests"].append(digest(model))
        return save(self, model, optimizer, generators, write)

    def recording_epoch(self, *args, **kwargs):
        out = rl_epoch(self, *args, **kwargs)
        RECORD["stores"].append(state_digest(self))
        return out

    parallel.ParallelModel.save = recording_save
    tool_learner.ToolLearner.rl_epoch = recording_epoch
    try:
        return main(argv)
    finally:
        with open(f"{run_dir}.rank{rank}.json", "a") as f:
            f.write(json.dumps(RECORD) + "\n")


if __name__ == "__main__":
    sys.exit(main_worker(sys.argv[1:]))

"""Run under ``torchrun --nproc_per_node=2`` by test_multiagent_dp.py (not collected by pytest):
``grouprl train ARGV`` (``mode: multiagent``) unchanged, recording on every rank the rows it
rolled out per iteration and a digest of every model group's weights at every checkpoint
(``RUN_DIR.rank{r}.json``)."""

from __future__ import annotations

import json
import os
import sys

from worker_train import digest  # one weights digest for every worker

import grouprl.recipes.multiagent as recipe
import grouprl.train.parallel as parallel
from grouprl.cli import main

RECORD: dict[str, list] = {"rows": [], "digests": []}


def main_worker(argv: list[str]) -> int:
    run_dir = argv[argv.index("--resume") + 1] if "--resume" in argv else \
        next(a.split("=", 1)[1] for a in argv if a.startswith("run_dir="))
    rank = int(os.environ["RANK"])
    rollout, save = recipe.team_rollout, parallel.ParallelModel.save

    def recording_rollout(team, generator, seeds, group_size, *args, **kwargs):
        roll, records = rollout(team, generator, seeds, group_size, *args, **kwargs)
        RECORD["rows"].append(len(roll.rows))
        return roll, records

    def recording_save(self, model, optimizer, generators, write):
        RECORD["digests"].append(digest(model))
        return save(self, model, optimizer, generators, write)

    recipe.team_rollout = recording_rollout
    parallel.ParallelModel.save = recording_save
    try:
        return main(argv)
    finally:
        with open(f"{run_dir}.rank{rank}.json", "a") as f:
            f.write(json.dumps(RECORD) + "\n")


if __name__ == "__main__":
    sys.exit(main_worker(sys.argv[1:]))

"""The BFCL multi-turn reader (grouprl.phgpo.bfcl): tools, reference call sequences and recorded
outputs of the package's base category, the split by task, the simulator, and the one-line
install hint when bfcl-eval is missing. Reader tests skip without the package."""

from __future__ import annotations

import importlib.resources
import importlib.util

import pytest

from grouprl.phgpo import bfcl
from grouprl.phgpo.bfcl import BFCL_INSTALL, BfclSimulator, load_bfcl, parse_call, split_bfcl
from grouprl.train.config import load_config
from grouprl.train.tool_data import load_tool_data
from grouprl.validation import UserError

needs_bfcl = pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None,
                                reason=f"bfcl-eval is not installed ({BFCL_INSTALL})")


def test_parse_call_reads_literals_only():
    assert parse_call("mv(source='a.pdf', destination='temp')") == \
        ("mv", [], {"source": "a.pdf", "destination": "temp"})
    assert parse_call("sort('final_report.pdf')") == ("sort", ["final_report.pdf"], {})
    assert parse_call("tail(file_name='log.txt',lines=20)")[2] == {"file_name": "log.txt",
                                                                     "lines": 20}
    with pytest.raises(ValueError):
        parse_call("cd(folder=__import__('os').getcwd())")
    with pytest.raises(ValueError, match="call"):
        parse_call("os.system('ls')")


def test_missing_package_names_the_install(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(name)
    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(UserError, match="pip install --no-deps bfcl-eval"):
        bfcl._data_root()


@needs_bfcl
def test_base_tasks_tools_references_and_outputs():
    data = load_bfcl("base")
    assert len(data.tasks) == 200
    assert len(data.tool_names) == len(set(data.tool_names))
    assert all(n.split("-", 1)[0] in bfcl.API_CLASSES for n in data.tool_names)
    first = data.tasks[0]                                   # multi_turn_base_0's ground truth
    assert first.name == "multi_turn_base_0"
    assert [data.tool_names[i] for i in first.reference] == [
        f"GorillaFileSystem-{f}" for f in ("cd", "mkdir", "mv", "cd", "grep", "sort", "cd", "mv",
                                           "cd", "diff")]
    assert first.query.startswith("Move 'final_report.pdf' within document directory")
    assert first.outputs[0] == "{'current_working_directory': 'document'}"   # executed
    assert "moved to 'temp/final_report.pdf'" in first.outputs[2]
    assert len(first.reference_variants) == len(first.reference)
    assert max(v for t in data.tasks for v in t.reference_variants) == data.num_variants - 1
    assert all(2 <= len(t.reference) for t in data.tasks)
    plain = load_bfcl("base", execute=False)
    assert plain.tasks[0].outputs[0] == "cd(folder='document')"
    assert [t.reference for t in plain.tasks] == [t.reference for t in data.tasks]


@needs_bfcl
def test_split_by_task_and_simulator():
    data = load_bfcl("base")
    train, test = split_bfcl(data.tasks)
    assert (len(train), len(test)) == (160, 40)
    assert not {t.task_id for t in train} & {t.task_id for t in test}
    assert split_bfcl(data.tasks)[1] == test                     # seeded
    sim, task = BfclSimulator(data.tool_names), data.tasks[0]
    assert sim.execute(task, 0, task.reference[0]) == task.outputs[0]
    other = (task.reference[0] + 1) % len(data.tool_names)
    assert sim.execute(task, 0, other) == f"Tool {data.tool_names[other]} executed successfully."
    cfg = load_config(None, ["mode=phgpo", "phgpo.task=bfcl"])
    tool_data = load_tool_data(cfg)
    assert [t.task_id for t in tool_data.test] == [t.task_id for t in test]
    assert tool_data.simulate(task, 0, task.reference[0]) == task.outputs[0]

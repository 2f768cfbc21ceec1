"""BFCL multi-turn tool tasks, offline, from the ``bfcl-eval`` package (Apache-2.0).

The Berkeley Function-Calling Leaderboard ships its multi-turn questions
(``bfcl_eval/data/BFCL_v4_multi_turn_<category>.json``), their ground-truth call sequences
(``data/possible_answer/...``) and each API class's function documents
(``data/multi_turn_func_doc/*.json``) as package data; this module reads them with
:mod:`importlib.resources` into the PhGPO task format (:class:`grouprl.phgpo.synthetic.ToolTask`):

* tools: every function of the API classes the category uses, named ``"<Class>-<function>"``
  (so the reward's "same category" is the same API class, spec §2.5), one global tool list;
* reference: the ground truth's calls of every turn, in order, as tool ids; the argument schema
  (the sorted keyword names of a call) is the variant (parameter pheromone);
* query: the user turns joined with ``" | "`` [GUESS: PhGPO's state has one query; a turn-aware
  state is not in the spec];
* outputs: with ``execute=True`` (default) the ground truth is run once, in process, on the
  package's pure-Python simulated APIs (file system, math, messages, posting, tickets, trading,
  travel, vehicle); each reference step records ``str(result)``. Calls are parsed with
  :mod:`ast` (literals only, never ``eval``); classes that need the network or faiss
  (web search, memory) are never imported. A call that raises records ``"error: ..."``;
  ``execute=False`` records the call text instead.

The simulator (:class:`grouprl.phgpo.synthetic.ToolSimulator` semantics): the recorded output
on a match with the reference step, otherwise ``"Tool <name> executed successfully."``.

Split by task (:func:`split_bfcl`): a seeded shuffle of the task ids; the last ``test_fraction``
(default 0.2: 160 train / 40 test of the 200 base tasks) are held out, so no test task's query
or reference is seen in training.

Install: ``pip install --no-deps bfcl-eval`` (its declared dependencies are heavy and unused
here; executing the ground truth needs ``mpmath``, which sympy already installs).
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import importlib.resources
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grouprl.validation import UserError, check_choice, check_number

from .synthetic import GENERIC_OUTPUT, ToolTask

__all__ = ["BFCL_CATEGORIES", "BFCL_INSTALL", "BfclData", "BfclSimulator", "load_bfcl",
           "parse_call", "split_bfcl"]

BFCL_INSTALL = "pip install --no-deps bfcl-eval"
BFCL_CATEGORIES = ("base", "long_context", "miss_func", "miss_param")
_PACKAGE = "bfcl_eval"
_BACKEND = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
#: class → (function-doc file, backend module); only the pure-Python simulated APIs.
API_CLASSES = {
    "GorillaFileSystem": ("gorilla_file_system.json", "gorilla_file_system"),
    "MathAPI": ("math_api.json", "math_api"),
    "MessageAPI": ("message_api.json", "message_api"),
    "TwitterAPI": ("posting_api.json", "posting_api"),
    "TicketAPI": ("ticket_api.json", "ticket_api"),
    "TradingBot": ("trading_bot.json", "trading_bot"),
    "TravelAPI": ("travel_booking.json", "travel_booking"),
    "VehicleControlAPI": ("vehicle_control.json", "vehicle_control"),
}
_STATELESS = ("MathAPI",)
OUTPUT_CHARS = 300


@dataclass(frozen=True)
class BfclData:
    """Tasks, the global tool names, the variant count and each tool's description."""

    tasks: list[ToolTask]
    tool_names: list[str]
    num_variants: int
    descriptions: list[str]


def _data_root() -> Any:
    try:
        return importlib.resources.files(_PACKAGE) / "data"
    except ModuleNotFoundError:
        raise UserError(f"phgpo.task=bfcl needs the BFCL data: {BFCL_INSTALL}") from None


def _json_lines(path: Any) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def parse_call(text: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``"mv(source='a', destination='b')"`` → ``("mv", [], {"source": "a", ...})``; literal
    arguments only (``ast.literal_eval``), ``ValueError`` otherwise."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"call: expected name(args), got {text!r}")
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    return node.func.id, args, kwargs


def _tools(root: Any, classes: Sequence[str]) -> tuple[list[str], list[str]]:
    names, descriptions = [], []
    for cls in classes:
        for doc in _json_lines(root / "multi_turn_func_doc" / API_CLASSES[cls][0]):
            names.append(f"{cls}-{doc['name']}")
            descriptions.append(doc.get("description", ""))
    return names, descriptions


def _execute(entry: dict, calls: list[str]) -> list[str]:
    """Run the ground truth on fresh simulated API instances; ``str(result)`` per call."""
    instances = {}
    for cls in entry["involved_classes"]:
        module = importlib.import_module(f"{_BACKEND}.{API_CLASSES[cls][1]}")
        instance = getattr(module, cls)()
        if cls not in _STATELESS:
            instance._load_scenario(copy.deepcopy(entry["initial_config"].get(cls, {})),
                                    long_context=False)
        instances[cls] = instance
    outputs = []
    for call in calls:
        name, args, kwargs = parse_call(call)
        owner = next((i for i in instances.values() if callable(getattr(i, name, None))
                      and not name.startswith("_")), None)
        try:
            result = getattr(owner, name)(*args, **kwargs) if owner is not None else \
                f"error: no function {name}"
        except Exception as err:  # noqa: BLE001 - the simulated API's own failure is data
            result = f"error: {type(err).__name__}: {err}"
        outputs.append(str(result)[:OUTPUT_CHARS])
    return outputs


@functools.lru_cache(maxsize=4)
def load_bfcl(category: str = "base", execute: bool = True) -> BfclData:
    """The multi-turn ``category`` tasks (module docstring); cached per process."""
    check_choice("category", category, BFCL_CATEGORIES)
    root = _data_root()
    stem = f"BFCL_v4_multi_turn_{category}.json"
    entries = _json_lines(root / stem)
    answers = {a["id"]: a["ground_truth"] for a in _json_lines(root / "possible_answer" / stem)}
    classes = sorted({c for e in entries for c in e["involved_classes"]})
    unknown = [c for c in classes if c not in API_CLASSES]
    if unknown:
        raise UserError(f"phgpo.bfcl_category={category}: uses API classes {unknown} that need "
                        "the network or faiss; use category base")
    names, descriptions = _tools(root, classes)
    index = {n: i for i, n in enumerate(names)}
    variants: dict[tuple[int, tuple[str, ...]], int] = {}
    tasks = []
    state = random.getstate()                   # the simulated APIs draw from `random`
    try:
        for k, entry in enumerate(entries):
            calls = [c for turn in answers[entry["id"]] for c in turn]
            if not calls:
                continue
            ids, keys = [], []
            for call in calls:
                fn, args, kwargs = parse_call(call)
                cls = next(c for c in entry["involved_classes"] if f"{c}-{fn}" in index)
                ids.append(index[f"{cls}-{fn}"])
                keys.append(variants.setdefault((ids[-1], tuple(sorted(kwargs))), len(variants)))
            random.seed(k)
            outputs = _execute(entry, calls) if execute else calls
            query = " | ".join(m["content"] for turn in entry["question"] for m in turn
                               if m.get("role") == "user")
            tasks.append(ToolTask(k, entry["id"], query, tuple(ids), tuple(keys),
                                  tuple(outputs)))
    finally:
        random.setstate(state)
    return BfclData(tasks, names, len(variants), descriptions)


def split_bfcl(tasks: Sequence[ToolTask], test_fraction: float = 0.2, seed: int = 42
               ) -> tuple[list[ToolTask], list[ToolTask]]:
    """(train, test) by task: a seeded shuffle, the last ``test_fraction`` held out."""
    check_number("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    cut = len(order) - max(1, round(test_fraction * len(order)))
    return [tasks[i] for i in order[:cut]], [tasks[i] for i in order[cut:]]


class BfclSimulator:
    """Replay the recorded output on a match with the reference step, else a generic string."""

    def __init__(self, tool_names: Sequence[str]) -> None:
        self.tool_names = list(tool_names)

    def execute(self, task: ToolTask, step: int, tool: int) -> str:
        if 0 <= step < len(task.reference) and task.reference[step] == tool:
            return task.outputs[step]
        return GENERIC_OUTPUT.format(tool=self.tool_names[tool])

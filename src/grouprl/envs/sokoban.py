"""Text Sokoban: level generation, a move-optimal BFS solver and a :class:`TextEnv`.

The environment follows gym-sokoban (Schrader, *gym-sokoban*, 2018,
https://github.com/mpSchrader/gym-sokoban) as used in text form by verl-agent (Feng et al., 2025,
*Group-in-Group Policy Optimization for LLM Agent Training*, arXiv:2505.10978) and GraphGPO.

Cells are rendered one character each, rows joined by ``"\\n"`` (no separators, no trailing
newline)::

    #  wall            _  floor           O  target
    X  box             √  box on target
    P  player          S  player on target

Actions are ``"up"``, ``"down"``, ``"left"``, ``"right"`` (case-insensitive, surrounding whitespace
ignored); any other action is *invalid*: nothing moves but the step still counts and costs.

Rewards (gym-sokoban defaults), per step::

    r = −0.1                                      every step (invalid, bump and no-op included)
      + 1   if the step pushed a box onto a target
      − 1   if the step pushed a box off a target
      + 10  if afterwards every box is on a target  (then done=True, info["won"]=True)

Levels are generated like gym-sokoban's ``generate_room``: a random-walk room topology inside an
outer wall, targets with boxes on them and a player placed on random floor cells, then *reverse
play* (the player walks randomly and sometimes pulls a box away from where it stands), which
yields a start state solvable by construction.  Each candidate is verified with the BFS solver and
rejected when it is already solved or its optimal length is outside the requested bounds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grouprl.validation import check_int

__all__ = [
    "ACTIONS",
    "SYMBOLS",
    "SokobanEnv",
    "SokobanLevel",
    "generate_level",
    "solve_sokoban",
]

ACTIONS: tuple[str, ...] = ("up", "down", "left", "right")
_DELTAS: dict[str, tuple[int, int]] = {
    "up": (-1, 0),
    "down": (1, 0),
    "left": (0, -1),
    "right": (0, 1),
}
SYMBOLS: dict[str, str] = {
    "wall": "#",
    "floor": "_",
    "target": "O",
    "box_on_target": "√",
    "box": "X",
    "player": "P",
    "player_on_target": "S",
}
_WALL, _FLOOR, _TARGET, _BOX_ON_TARGET, _BOX, _PLAYER, _PLAYER_ON_TARGET = SYMBOLS.values()

STEP_REWARD = -0.1
BOX_ON_TARGET_REWARD = 1.0
BOX_OFF_TARGET_REWARD = -1.0
FINISH_REWARD = 10.0

TASK = (
    "Push every box (X) onto a target (O) by moving the player (P) up, down, left or right; "
    "# is a wall, _ is floor, √ is a box on a target, S is the player on a target, and boxes can "
    "only be pushed, never pulled."
)

Cell = tuple[int, int]

# Room-topology masks carved around the random-walk position (own choice of shapes).
_MASKS: tuple[tuple[Cell, ...], ...] = (
    ((0, 0),),
    ((0, 0), (0, 1)),
    ((0, 0), (1, 0)),
    ((0, 0), (0, 1), (1, 0), (1, 1)),
    ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)),
)
_P_CHANGE_DIRECTION = 0.35  # gym-sokoban's default p_change_directions
_PULL_PROBABILITY = 0.8


# --------------------------------------------------------------------------------------------
# Levels
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SokobanLevel:
    """One Sokoban level.

    ``walls`` is a boolean ``[rows, cols]`` array (True = wall); ``targets`` and ``boxes`` are
    sorted tuples of ``(row, col)``; ``player`` is ``(row, col)``; ``solution`` is a move-optimal
    action list from this state (``None`` when unknown).  Cells outside the array count as wall.
    """

    walls: np.ndarray
    targets: tuple[Cell, ...]
    boxes: tuple[Cell, ...]
    player: Cell
    solution: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        self.walls = np.asarray(self.walls, dtype=bool)
        if self.walls.ndim != 2:
            raise ValueError(f"walls: must be a 2-D boolean array, got shape {self.walls.shape}")
        self.targets = tuple(sorted(_cell(t, "targets") for t in self.targets))
        self.boxes = tuple(sorted(_cell(b, "boxes") for b in self.boxes))
        self.player = _cell(self.player, "player")
        if len(self.boxes) != len(self.targets):
            raise ValueError(f"boxes/targets: need as many boxes as targets, got "
                             f"{len(self.boxes)} boxes and {len(self.targets)} targets")
        if len(set(self.boxes)) != len(self.boxes) or len(set(self.targets)) != len(self.targets):
            raise ValueError("boxes/targets: cells must be distinct")
        for name, cells in (("boxes", self.boxes), ("targets", self.targets),
                            ("player", (self.player,))):
            for r, c in cells:
                if not (0 <= r < self.walls.shape[0] and 0 <= c < self.walls.shape[1]):
                    raise ValueError(f"{name}: cell {(r, c)} is outside the "
                                     f"{self.walls.shape} grid")
                if self.walls[r, c]:
                    raise ValueError(f"{name}: cell {(r, c)} is a wall")
        if self.player in self.boxes:
            raise ValueError(f"player: cell {self.player} holds a box")

    @property
    def dim_room(self) -> tuple[int, int]:
        """``(rows, cols)`` of the grid."""
        return int(self.walls.shape[0]), int(self.walls.shape[1])

    def render(self) -> str:
        """The level as observation text (see the module docstring for the symbols)."""
        return "\n".join("".join(row) for row in _grid(self.walls, self.targets, self.boxes,
                                                        self.player))

    @classmethod
    def from_text(cls, text: str, solution: list[str] | None = None) -> SokobanLevel:
        """Parse observation text (the symbols of the module docstring) into a level.

        Rows must have equal length; leading/trailing blank lines and per-line surrounding
        whitespace are ignored.  Exactly one player (``P`` or ``S``) is required.
        """
        rows = [line.strip() for line in text.strip().splitlines()]
        if not rows or any(len(r) != len(rows[0]) for r in rows):
            raise ValueError("text: rows must be non-empty and of equal length")
        walls = np.zeros((len(rows), len(rows[0])), dtype=bool)
        targets: list[Cell] = []
        boxes: list[Cell] = []
        players: list[Cell] = []
        for r, row in enumerate(rows):
            for c, ch in enumerate(row):
                if ch == _WALL:
                    walls[r, c] = True
                elif ch in (_TARGET, _BOX_ON_TARGET, _PLAYER_ON_TARGET):
                    targets.append((r, c))
                elif ch not in (_FLOOR, _BOX, _PLAYER):
                    raise ValueError(f"text: unknown symbol {ch!r} at {(r, c)}; accepted: "
                                     + " ".join(SYMBOLS.values()))
                if ch in (_BOX, _BOX_ON_TARGET):
                    boxes.append((r, c))
                if ch in (_PLAYER, _PLAYER_ON_TARGET):
                    players.append((r, c))
        if len(players) != 1:
            raise ValueError(f"text: need exactly one player (P or S), found {len(players)}")
        return cls(walls, tuple(targets), tuple(boxes), players[0], solution)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SokobanLevel):
            return NotImplemented
        return (np.array_equal(self.walls, other.walls) and self.targets == other.targets
                and self.boxes == other.boxes and self.player == other.player
                and self.solution == other.solution)

    __hash__ = None  # type: ignore[assignment]


def _cell(value: Any, name: str) -> Cell:
    try:
        r, c = value
        return int(r), int(c)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: cells must be (row, col) pairs, got {value!r}") from None


def _grid(walls: np.ndarray, targets: Iterable[Cell], boxes: Iterable[Cell],
          player: Cell) -> list[list[str]]:
    grid = [[_WALL if w else _FLOOR for w in row] for row in walls.tolist()]
    for r, c in targets:
        grid[r][c] = _TARGET
    for r, c in boxes:
        grid[r][c] = _BOX_ON_TARGET if grid[r][c] == _TARGET else _BOX
    r, c = player
    grid[r][c] = _PLAYER_ON_TARGET if grid[r][c] == _TARGET else _PLAYER
    return grid


# --------------------------------------------------------------------------------------------
# Solver
# --------------------------------------------------------------------------------------------


def solve_sokoban(walls: Any, boxes: Iterable[Cell], targets: Iterable[Cell], player: Cell,
                  max_states: int = 200_000) -> list[str] | None:
    """A move-optimal solution (list of actions), ``[]`` when solved, ``None`` when none is found.

    Breadth-first search over states ``(player cell, sorted box cells)`` with unit cost per move,
    so the first goal state reached has the fewest moves (pushes and walks counted alike).  Goal:
    every box on a target.  Pushes into a *dead corner* (a non-target floor cell with a wall above
    or below and a wall left or right, from which a box can never be moved again) are pruned;
    this never removes an optimal solution.  The search gives up (``None``) once more than
    ``max_states`` states are stored.  Cells outside ``walls`` count as wall.
    """
    check_int("max_states", max_states, 1)
    wall_arr = np.asarray(walls, dtype=bool)
    if wall_arr.ndim != 2:
        raise ValueError(f"walls: must be a 2-D boolean array, got shape {wall_arr.shape}")
    rows, cols = wall_arr.shape
    width = cols + 2  # pad one wall cell on every side so moves never leave the grid
    padded = np.ones((rows + 2, width), dtype=bool)
    padded[1:-1, 1:-1] = wall_arr
    wall_flat = padded.ravel().tolist()

    def index(cell: Cell, name: str) -> int:
        r, c = _cell(cell, name)
        if not (0 <= r < rows and 0 <= c < cols) or wall_arr[r, c]:
            raise ValueError(f"{name}: cell {(r, c)} is outside the grid or a wall")
        return (r + 1) * width + c + 1

    box_idx = tuple(sorted(index(b, "boxes") for b in boxes))
    target_set = frozenset(index(t, "targets") for t in targets)
    start_player = index(player, "player")
    if start_player in box_idx:
        raise ValueError(f"player: cell {tuple(player)} holds a box")
    return _bfs(wall_flat, width, box_idx, target_set, start_player, max_states)


def _dead_cells(wall_flat: list[bool], width: int, targets: frozenset[int]) -> list[bool]:
    dead = [False] * len(wall_flat)
    for i, w in enumerate(wall_flat):
        if w or i in targets:
            continue
        vertical = (i - width >= 0 and wall_flat[i - width]) or (
            i + width < len(wall_flat) and wall_flat[i + width])
        horizontal = wall_flat[i - 1] or wall_flat[i + 1]
        dead[i] = bool(vertical and horizontal)
    return dead


def _bfs(wall_flat: list[bool], width: int, boxes: tuple[int, ...], targets: frozenset[int],
         player: int, max_states: int) -> list[str] | None:
    if targets.issuperset(boxes):
        return []
    dead = _dead_cells(wall_flat, width, targets)
    if any(dead[b] for b in boxes):
        return None
    moves = ((-width, "up"), (width, "down"), (-1, "left"), (1, "right"))
    start = (player, boxes)
    parents: dict[tuple[int, tuple[int, ...]], tuple[Any, str] | None] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for state in frontier:
            p, bx = state
            for d, name in moves:
                q = p + d
                if wall_flat[q]:
                    continue
                if q in bx:
                    t = q + d
                    if wall_flat[t] or dead[t] or t in bx:
                        continue
                    nb = tuple(sorted(t if b == q else b for b in bx))
                    ns = (q, nb)
                    if ns in parents:
                        continue
                    parents[ns] = (state, name)
                    if targets.issuperset(nb):
                        return _path(parents, ns)
                else:
                    ns = (q, bx)
                    if ns in parents:
                        continue
                    parents[ns] = (state, name)
                nxt.append(ns)
            if len(parents) > max_states:
                return None
        frontier = nxt
    return None


def _path(parents: dict, state: Any) -> list[str]:
    out: list[str] = []
    link = parents[state]
    while link is not None:
        state, name = link
        out.append(name)
        link = parents[state]
    out.reverse()
    return out


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def generate_level(rng: np.random.Generator | int, dim_room: Sequence[int] = (6, 6),
                   num_boxes: int = 1, min_solution_length: int = 1,
                   max_solution_length: int | None = None, *, attempts: int = 1000,
                   max_states: int = 100_000) -> SokobanLevel:
    """Generate a solvable level whose optimal solution length lies in the bounds.

    ``rng`` is a NumPy ``Generator`` or an int seed (the same seed always gives the same level,
    whatever the global RNG state).  Each attempt: (1) random-walk room topology inside an outer
    wall (``1.7·(rows+cols)`` steps, direction changes with probability 0.35, a random small
    mask carved at each position, as gym-sokoban's ``room_topology_generation``); (2) targets,
    each holding a box, and the player on distinct random floor cells; (3) reverse play for
    ``10·(rows+cols)·num_boxes`` steps: the player moves randomly and, with probability 0.8, pulls
    a box that is directly behind it, and the walk's record states under gym-sokoban's score
    ``pulls · Σ_box |box − its start target|₁`` are kept; (4) the BFS solver (capped at
    ``max_states``) solves the record states, hardest first, and the first whose optimal length
    ``L`` satisfies ``L ≤ max_solution_length`` becomes the start unless ``L <
    min_solution_length`` (then, or when no pull happened, the attempt is rejected).  After
    ``attempts`` rejections a ``RuntimeError`` names the options to relax.
    """
    dims = _check_dims(dim_room)
    check_int("num_boxes", num_boxes, 1)
    check_int("min_solution_length", min_solution_length, 1)
    check_int("max_solution_length", max_solution_length, min_solution_length, none_ok=True,
              note="at least min_solution_length")
    check_int("attempts", attempts, 1)
    check_int("max_states", max_states, 1)
    rows, cols = dims
    if (rows - 2) * (cols - 2) < num_boxes + 1:
        raise ValueError(f"dim_room: {dims} has {(rows - 2) * (cols - 2)} interior cells, too "
                         f"few for num_boxes={num_boxes} plus the player")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: must be a numpy.random.Generator or an int seed, got "
                        f"{type(rng).__name__}")
    # A fast stdlib RNG seeded from the numpy one: scalar draws are ~10x cheaper.
    pyrng = random.Random(int(rng.integers(0, 2**63 - 1)))
    width = cols + 2
    for _ in range(attempts):
        wall_flat = _topology(pyrng, rows, cols)
        floor = [i for i, w in enumerate(wall_flat) if not w]
        if len(floor) < num_boxes + 2:
            continue
        cells = pyrng.sample(floor, num_boxes + 1)
        targets = frozenset(cells[:num_boxes])
        records = _reverse_play(pyrng, wall_flat, width, targets, cells[num_boxes],
                                10 * (rows + cols) * num_boxes)
        found = None
        for player, box_t in reversed(records):  # hardest first
            solution = _bfs(wall_flat, width, box_t, targets, player, max_states)
            if solution is None or len(solution) < min_solution_length:
                break
            if max_solution_length is None or len(solution) <= max_solution_length:
                found = player, box_t, solution
                break
        if found is None:
            continue
        player, box_t, solution = found

        def cell(i: int) -> Cell:
            return i // width - 1, i % width - 1

        walls = np.array(wall_flat, dtype=bool).reshape(rows + 2, width)[1:-1, 1:-1].copy()
        return SokobanLevel(walls, tuple(cell(t) for t in targets), tuple(cell(b) for b in box_t),
                            cell(player), solution)
    raise RuntimeError(
        f"generate_level: no level found in attempts={attempts} with dim_room={dims}, "
        f"num_boxes={num_boxes}, min_solution_length={min_solution_length}, "
        f"max_solution_length={max_solution_length}; widen the solution-length bounds, enlarge "
        f"dim_room, reduce num_boxes or raise attempts/max_states")


def _topology(rng: random.Random, rows: int, cols: int) -> list[bool]:
    """Padded flat wall list (one extra wall ring around the ``rows×cols`` room)."""
    width = cols + 2
    walls = [True] * ((rows + 2) * width)
    r, c = rng.randint(1, rows - 2), rng.randint(1, cols - 2)
    dr, dc = _DELTAS[rng.choice(ACTIONS)]
    walls[(r + 1) * width + c + 1] = False
    for _ in range(int(1.7 * (rows + cols))):
        if rng.random() < _P_CHANGE_DIRECTION:
            dr, dc = _DELTAS[rng.choice(ACTIONS)]
        r = min(max(r + dr, 1), rows - 2)
        c = min(max(c + dc, 1), cols - 2)
        for mr, mc in rng.choice(_MASKS):
            rr, cc = r + mr, c + mc
            if 1 <= rr <= rows - 2 and 1 <= cc <= cols - 2:
                walls[(rr + 1) * width + cc + 1] = False
    return walls


def _reverse_play(rng: random.Random, walls: list[bool], width: int, targets: frozenset[int],
                  player: int, steps: int) -> list[tuple[int, tuple[int, ...]]]:
    """Random reverse moves from the solved state; a pull drags the box behind the player.

    Returns the *record* states of the walk, hardest last: each time the score
    ``pulls · Σ_box |box − its original target|₁`` (gym-sokoban's reverse-play score) exceeds
    every earlier score, the state ``(player, sorted boxes)`` is recorded; while the score stays
    at the record, the recorded player position follows the walk.
    """
    origin = {t: t for t in targets}  # box cell -> the target it started on
    deltas = (-width, width, -1, 1)
    pulls = score = best = 0
    records: list[tuple[int, tuple[int, ...]]] = []
    for _ in range(steps):
        d = rng.choice(deltas)
        q = player + d
        if walls[q] or q in origin:
            continue
        behind = player - d
        if behind in origin and rng.random() < _PULL_PROBABILITY:
            origin[player] = origin.pop(behind)
            pulls += 1
            score = pulls * sum(abs(b // width - t // width) + abs(b % width - t % width)
                                for b, t in origin.items())
        player = q
        if score > best:
            best = score
            records.append((player, tuple(sorted(origin))))
        elif score == best and records:
            records[-1] = (player, records[-1][1])  # same boxes, the player walked on
    return records


def _check_dims(dim_room: Any) -> tuple[int, int]:
    try:
        rows, cols = (int(x) for x in dim_room)
        ok = all(int(x) == x for x in dim_room)
    except (TypeError, ValueError):
        ok = False
    if not ok or rows < 3 or cols < 3:
        raise ValueError(f"dim_room: must be (rows, cols) with both ≥ 3, got {dim_room!r}")
    return rows, cols


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


class SokobanEnv:
    """Text Sokoban implementing :class:`grouprl.envs.TextEnv` (rules: module docstring).

    ``reset(seed)`` generates a level deterministically from ``seed`` (``generate_level`` with
    ``numpy.random.default_rng(seed)``); ``reset_to_level(level)`` plays a given level.  With
    ``max_steps`` set, the step that reaches ``max_steps`` steps since reset ends the episode
    (``done=True``, ``won=False``, ``info["truncated"]=True``) unless it won.  Stepping before
    ``reset`` or after the episode ended raises ``RuntimeError``.
    """

    #: the grid's cell symbols; a tokenizer trained for Sokoban keeps each one a single token
    grid_symbols = "#_OX√PS"


    def __init__(self, dim_room: Sequence[int] = (6, 6), num_boxes: int = 1, *,
                 min_solution_length: int = 1, max_solution_length: int | None = None,
                 max_steps: int | None = None, generation_attempts: int = 1000,
                 max_solver_states: int = 100_000) -> None:
        self.dim_room = _check_dims(dim_room)
        check_int("num_boxes", num_boxes, 1)
        check_int("min_solution_length", min_solution_length, 1)
        check_int("max_solution_length", max_solution_length, min_solution_length, none_ok=True,
                  note="at least min_solution_length")
        check_int("max_steps", max_steps, 1, none_ok=True)
        check_int("generation_attempts", generation_attempts, 1)
        check_int("max_solver_states", max_solver_states, 1)
        rows, cols = self.dim_room
        if (rows - 2) * (cols - 2) < num_boxes + 1:
            raise ValueError(f"dim_room: {self.dim_room} has {(rows - 2) * (cols - 2)} interior "
                             f"cells, too few for num_boxes={num_boxes} plus the player")
        self.num_boxes = int(num_boxes)
        self.min_solution_length = int(min_solution_length)
        self.max_solution_length = max_solution_length
        self.max_steps = max_steps
        self.generation_attempts = int(generation_attempts)
        self.max_solver_states = int(max_solver_states)
        self._level: SokobanLevel | None = None

    # -- episode control --------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Generate the level of ``seed`` (``None``: fresh OS entropy) and start an episode."""
        check_int("seed", seed, 0, none_ok=True)
        level = generate_level(np.random.default_rng(None if seed is None else int(seed)),
                               self.dim_room, self.num_boxes, self.min_solution_length,
                               self.max_solution_length, attempts=self.generation_attempts,
                               max_states=self.max_solver_states)
        return self.reset_to_level(level)

    def reset_to_level(self, level: SokobanLevel | str) -> tuple[str, dict[str, Any]]:
        """Start an episode on ``level`` (a :class:`SokobanLevel` or its text)."""
        if isinstance(level, str):
            level = SokobanLevel.from_text(level)
        if not isinstance(level, SokobanLevel):
            raise TypeError(f"level: must be a SokobanLevel or text, got {type(level).__name__}")
        self._level = level
        self._rows, self._cols = level.dim_room
        self._walls = level.walls.tolist()
        self._targets = frozenset(level.targets)
        self._boxes = set(level.boxes)
        self._player = level.player
        self._on_target = sum(b in self._targets for b in self._boxes)
        self._grid = _grid(level.walls, level.targets, level.boxes, level.player)
        self._text: str | None = None
        self._steps = 0
        self._done = False
        self._won = False
        obs = self.render()
        return obs, {"task": TASK, "anchor": obs, "admissible_actions": list(ACTIONS)}

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Apply one action; returns ``(observation, reward, done, info)`` (rules: module doc)."""
        if self._level is None:
            raise RuntimeError("step: call reset() first")
        if self._done:
            raise RuntimeError("step: the episode is over; call reset()")
        reward = STEP_REWARD
        key = action.strip().lower() if isinstance(action, str) else None
        valid = key in _DELTAS
        moved = pushed = False
        if valid:
            dr, dc = _DELTAS[key]
            pr, pc = self._player
            q = (pr + dr, pc + dc)
            if not self._is_wall(q):
                if q in self._boxes:
                    t = (q[0] + dr, q[1] + dc)
                    if not self._is_wall(t) and t not in self._boxes:
                        self._boxes.remove(q)
                        self._boxes.add(t)
                        reward += self._box_moved(q, t)
                        moved = pushed = True
                else:
                    moved = True
                if moved:
                    self._set_cell(self._player, player=False)
                    self._player = q
                    self._set_cell(q, player=True)
        self._steps += 1
        won = self._on_target == len(self._boxes)
        if won:
            reward += FINISH_REWARD
        truncated = (not won and self.max_steps is not None and self._steps >= self.max_steps)
        self._done = won or truncated
        self._won = won
        obs = self.render()
        info = {"won": won, "valid": valid, "anchor": obs, "admissible_actions": list(ACTIONS),
                "moved": moved, "pushed": pushed, "boxes_on_target": self._on_target,
                "truncated": truncated}
        return obs, reward, self._done, info

    def close(self) -> None:
        """Nothing to release (pure Python)."""

    # -- helpers ------------------------------------------------------------------------------

    def _is_wall(self, cell: Cell) -> bool:
        r, c = cell
        return not (0 <= r < self._rows and 0 <= c < self._cols) or self._walls[r][c]

    def _box_moved(self, src: Cell, dst: Cell) -> float:
        delta = 0.0
        if src in self._targets:
            self._on_target -= 1
            delta += BOX_OFF_TARGET_REWARD
        if dst in self._targets:
            self._on_target += 1
            delta += BOX_ON_TARGET_REWARD
        self._set_cell(src, player=False)
        self._set_cell(dst, player=False)
        return delta

    def _set_cell(self, cell: Cell, player: bool) -> None:
        r, c = cell
        target = cell in self._targets
        if player:
            ch = _PLAYER_ON_TARGET if target else _PLAYER
        elif cell in self._boxes:
            ch = _BOX_ON_TARGET if target else _BOX
        else:
            ch = _TARGET if target else _FLOOR
        self._grid[r][c] = ch
        self._text = None

    # -- inspection ---------------------------------------------------------------------------

    def render(self) -> str:
        """The current observation text (cached; rebuilt in O(cells) only after a move)."""
        self._require_level()
        if self._text is None:
            self._text = "\n".join("".join(row) for row in self._grid)
        return self._text

    def expert_actions(self) -> list[str] | None:
        """A move-optimal action list from the current state (``[]`` when solved).

        ``None`` when the current state is unsolvable (e.g. a box pushed into a corner) or the
        solver exceeds ``max_solver_states``.
        """
        self._require_level()
        return solve_sokoban(self.walls, self._boxes, self._targets, self._player,
                             max_states=self.max_solver_states)

    def _require_level(self) -> SokobanLevel:
        if self._level is None:
            raise RuntimeError("call reset() first")
        return self._level

    @property
    def level(self) -> SokobanLevel:
        """The level the current episode started from (with its ``solution``)."""
        return self._require_level()

    @property
    def player(self) -> Cell:
        """Current player cell ``(row, col)``."""
        self._require_level()
        return self._player

    @property
    def boxes(self) -> tuple[Cell, ...]:
        """Current box cells, sorted."""
        self._require_level()
        return tuple(sorted(self._boxes))

    @property
    def targets(self) -> tuple[Cell, ...]:
        """Target cells, sorted."""
        return self._require_level().targets

    @property
    def walls(self) -> np.ndarray:
        """Boolean ``[rows, cols]`` wall mask (a copy)."""
        return self._require_level().walls.copy()

    @property
    def num_steps(self) -> int:
        """Steps taken since the last reset."""
        self._require_level()
        return self._steps

    @property
    def boxes_on_target(self) -> int:
        """Number of boxes currently on a target."""
        self._require_level()
        return self._on_target

    @property
    def done(self) -> bool:
        """Whether the current episode has ended."""
        return self._level is not None and self._done

    @property
    def won(self) -> bool:
        """Whether the current episode was solved."""
        return self._level is not None and self._won

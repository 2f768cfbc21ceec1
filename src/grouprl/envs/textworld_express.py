"""TextWorldExpress games as a grouprl :class:`~grouprl.envs.base.TextEnv`.

`TextWorldExpress <https://github.com/cognitiveailab/TextWorldExpress>`_ (``pip install
textworld-express``) simulates eight parametric text games on a JVM: ``cookingworld``, ``twc``
(TextWorld Commonsense), ``coin``, ``mapreader``, ``arithmetic``, ``sorting``, ``simonsays`` and
``peckingorder``. One :class:`TextWorldExpressEnv` starts one JVM in its constructor (about 0.3 s,
1 s with the first game load) and keeps it for every episode; :meth:`~TextWorldExpressEnv.close`
shuts it down.

Contract details (see :mod:`grouprl.envs.base` for the protocol):

* **Seeds and folds.** Each fold (``train``/``dev``/``test``) has its own list of game seeds, taken
  from the package (``getValidSeedsTrain``/``Dev``/``Test``; 1000 each, disjoint).
  ``reset(seed)`` plays game seed ``fold_seeds[seed % len(fold_seeds)]``, so equal seeds give the
  same game and any integer is accepted. The game itself does not enforce folds; this mapping does.
* **Text.** The observation is the game's observation text; ``info["task"]`` is its task
  description; ``info["admissible_actions"]`` is its list of valid actions, in the game's order.
* **Reward.** The game reports a raw score (points) and a normalised one, ``1.0`` when solved and
  negative on failure (``-1.0`` when ``arithmetic`` boxes a wrong item). The reward of a step is
  the change of the normalised score, so the rewards of an episode sum to its final normalised
  score (``1.0`` for a win). The raw score is not used; ``info["score"]`` is the normalised one.
* **Termination.** ``done`` when the game reports success or failure, or after ``env_step_limit``
  calls to :meth:`~TextWorldExpressEnv.step` (then ``won`` is ``False``). ``won`` is the game's
  ``tasksuccess`` flag. Stepping a finished episode raises ``RuntimeError``.
* **Validity.** ``info["valid"]`` is whether the action (stripped of surrounding spaces) is in the
  admissible list of the state it was taken in. Every action is still sent to the game and costs a
  step. The game parses input by matching it against that same list (case-sensitively), so an
  inadmissible action gets ``"Unknown action: I'm not sure what you mean."`` and changes nothing.
  The list is not minimal: it can hold actions without effect (``"open door to north"`` on an
  open door answers ``"That is already open."``), which count as valid. The package intercepts
  ``"help"`` and answers it with the task description without advancing the game (invalid).
* **Anchor.** The GiGPO/HGPO/GraphGPO state key is the string ::

      observation + "\\n[look]\\n" + look + "\\n[inventory]\\n" + inventory
                  + "\\n[admissible]\\n" + ",".join(sorted(admissible_actions))

  where ``look`` and ``inventory`` are the room description and inventory text the game returns
  with every step (no extra game call). The raw observation alone merges states: ``"Unknown
  action: ..."`` reads the same in every room. ``include_state_in_anchor=False`` drops the look
  and inventory sections, ``include_admissible_in_anchor=False`` the admissible section; with both
  off the anchor is the observation itself.
* **Several games on one JVM.** ``game`` may be a list of games (``["coin", "sorting"]``, K
  games): ``reset(seed)`` plays game ``k = seed % K`` with index ``seed // K`` into that game's
  fold seeds (:func:`grouprl.envs.multitask.task_of_seed`, the mapping of
  :class:`~grouprl.envs.multitask.MultiTaskEnv`), loading the game on the JVM when it differs
  from the loaded one. Every game is loaded once in the constructor (checking its
  ``game_params`` and caching its fold seeds). ``info["category"]`` is the game's name, and the
  anchor (reset and step) is ``(game, anchor)``, so two games never share a state.
  ``game_params`` is then one string for every game or a dict ``{game: params}`` (games left
  out get ``""``). :attr:`~TextWorldExpressEnv.game` is the loaded game; a single game (a str)
  behaves as without this mode (no ``category``, string anchors).
* **Expert actions.** :meth:`~TextWorldExpressEnv.gold_actions` returns the game's gold action
  sequence for the current episode (``getGoldActionSequence``). For ``coin`` and ``twc`` the
  package searches this path with a randomised search, so two resets of one seed can give
  different (all winning) sequences; the game itself is the same. A gold path can run past the
  winning step (``twc`` paths end with one more move); the episode is ``done`` at the win, so
  replay it until ``done``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from grouprl.envs.jvm import JVMTextEnv, seed_index
from grouprl.envs.multitask import category_anchor, task_of_seed
from grouprl.envs.optional import require, require_java
from grouprl.validation import canonical_name, check_choice

__all__ = ["TextWorldExpressEnv", "GAMES", "FOLDS"]

GAMES = ("cookingworld", "twc", "coin", "mapreader", "arithmetic", "sorting", "simonsays",
         "peckingorder")
"""The TextWorldExpress games, as ``textworld_express.constants.GAME_NAMES`` lists them."""

FOLDS = ("train", "dev", "test")
"""Seed folds; each maps to the package's list of valid seeds for that fold."""


def _positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1; ``ValueError``/``TypeError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def _games(game: Any) -> tuple[tuple[str, ...], bool]:
    """The canonical games of ``game`` (a name or a list of names) and whether it was a list."""
    if isinstance(game, str):
        return (canonical_name("game", "TextWorldExpress game", game, GAMES, {}),), False
    if not isinstance(game, Sequence) or not game:
        raise TypeError(f"game: expected a game name or a non-empty list of them, got {game!r}")
    games = tuple(canonical_name(f"game[{i}]", "TextWorldExpress game", g, GAMES, {})
                  for i, g in enumerate(game))
    for i, g in enumerate(games):
        if games.index(g) != i:
            raise ValueError(f"game[{i}]: {g!r} is listed twice; list each game once")
    return games, True


def _params(game_params: Any, games: tuple[str, ...], multi: bool) -> dict[str, str]:
    """``{game: params}`` from a str (every game) or, with several games, a dict."""
    if isinstance(game_params, str):
        return dict.fromkeys(games, game_params)
    if not multi or not isinstance(game_params, dict):
        need = "a str or a dict {game: params}" if multi else "a str"
        raise TypeError(f"game_params: expected {need} such as 'numLocations=5', "
                        f"got {game_params!r}")
    out = dict.fromkeys(games, "")
    for key, value in game_params.items():
        name = canonical_name(f"game_params.{key}", "TextWorldExpress game", key, GAMES, {})
        if name not in out:
            raise ValueError(f"game_params.{key}: {name!r} is not one of the games {list(games)}")
        if not isinstance(value, str):
            raise TypeError(f"game_params.{key}: expected a str such as 'numLocations=5', "
                            f"got {value!r}")
        out[name] = value
    return out


class TextWorldExpressEnv(JVMTextEnv):
    """One TextWorldExpress game on its own JVM (see the module docstring for the contract).

    Args:
        game: one of :data:`GAMES` (case-insensitive), or a list of them: several games on one
            JVM (module docstring).
        game_params: the package's generation parameters, e.g. ``"numLocations=5,includeDoors=0"``
            (``""`` for the game's defaults); the game's own error is raised as ``ValueError``.
            With a list of games, also a dict ``{game: params}``.
        fold: ``"train"``, ``"dev"`` or ``"test"``: which seed list ``reset(seed)`` draws from.
        env_step_limit: episodes end (not won) after this many steps.
        include_admissible_in_anchor: add ``",".join(sorted(admissible_actions))`` to the anchor.
        include_state_in_anchor: add the look and inventory texts to the anchor.
        generate_gold_path: have the game compute its gold path at every reset (a few
            milliseconds); when off, :meth:`gold_actions` still works before the first step.

    Raises:
        ImportError: ``textworld_express`` is not installed.
        JavaMissingError: no Java >= 11 on ``PATH``.
    """

    def __init__(self, game: str | Sequence[str] = "coin",
                 game_params: str | dict[str, str] = "", fold: str = "train", *,
                 env_step_limit: int = 100, include_admissible_in_anchor: bool = True,
                 include_state_in_anchor: bool = True, generate_gold_path: bool = True) -> None:
        self.games, self.multi_game = _games(game)
        self.game = self.games[0]
        check_choice("fold", fold, FOLDS)
        self._params = _params(game_params, self.games, self.multi_game)
        self.env_step_limit = _positive_int("env_step_limit", env_step_limit)
        check_choice("include_admissible_in_anchor", include_admissible_in_anchor, (True, False))
        check_choice("include_state_in_anchor", include_state_in_anchor, (True, False))
        check_choice("generate_gold_path", generate_gold_path, (True, False))
        self.fold = fold
        self.game_params = game_params
        self.include_admissible_in_anchor = include_admissible_in_anchor
        self.include_state_in_anchor = include_state_in_anchor
        self.generate_gold_path = generate_gold_path

        twx = require("textworld_express")
        require_java("TextWorldExpress")
        self._closed = False
        self._env = twx.TextWorldExpressEnv(envStepLimit=2**31 - 1)  # the limit is counted here
        self._seeds_of: dict[str, tuple[int, ...]] = {}
        try:
            for name in reversed(self.games):  # the first game stays loaded
                self._load(name)
                getter = {"train": self._env.getValidSeedsTrain,
                          "dev": self._env.getValidSeedsDev,
                          "test": self._env.getValidSeedsTest}[fold]
                self._seeds_of[name] = tuple(int(s) for s in getter())
        except BaseException:
            self.close()
            raise
        self._fold_seeds = self._seeds_of[self.game]
        self._game_seed: int | None = None
        self._gold_generated = False
        self._steps = 0
        self._done = False
        self._score = 0.0
        self._admissible: list[str] = []

    # ------------------------------------------------------------------ properties
    @property
    def fold_seeds(self) -> tuple[int, ...]:
        """The game seeds of this env's fold (of the loaded game), in the package's order."""
        return self._fold_seeds

    def fold_seeds_of(self, game: str) -> tuple[int, ...]:
        """The fold's game seeds of ``game`` (one of :attr:`games`)."""
        return self._seeds_of[check_choice("game", game, self.games)]

    @property
    def game_seed(self) -> int | None:
        """The game seed of the current episode (``None`` before the first reset)."""
        return self._game_seed

    # ------------------------------------------------------------------ protocol
    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        """Start game seed ``fold_seeds[seed % len(fold_seeds)]``; return ``(observation, info)``.

        ``info`` has ``task``, ``anchor``, ``admissible_actions``, ``score`` (0.0) and
        ``game_seed``. With several games: game ``k = seed % K`` at index ``seed // K`` (loaded
        first when another game is loaded), and ``info["category"]`` is its name.
        """
        index = seed_index(seed)
        self._check_open()
        if self.multi_game:
            k, index = task_of_seed(index, len(self.games))
            if self.games[k] != self.game:
                self._game_seed = None  # no episode until the new game is reset
                self._load(self.games[k])
                self.game, self._fold_seeds = self.games[k], self._seeds_of[self.games[k]]
        game_seed = self._fold_seeds[index % len(self._fold_seeds)]
        observation, raw = self._env.reset(seed=game_seed, gameFold=self.fold,
                                           generateGoldPath=self.generate_gold_path)
        self._game_seed = game_seed
        self._gold_generated = self.generate_gold_path
        self._steps = 0
        self._done = False
        self._score = float(raw["score"])
        self._admissible = [str(a) for a in raw["validActions"]]
        info = {
            "task": str(raw["taskDescription"]),
            "anchor": self._anchor(observation, raw),
            "admissible_actions": list(self._admissible),
            "score": self._score,
            "game_seed": game_seed,
        }
        if self.multi_game:
            info["category"] = self.game
        return observation, info

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Send ``action`` to the game; return ``(observation, reward, done, info)``.

        ``info`` has ``won``, ``valid``, ``anchor``, ``admissible_actions`` and ``score`` (the
        normalised score after the step).
        """
        self._check_step(action, self._game_seed is not None)
        valid = action.strip() in self._admissible
        observation, _, game_done, raw = self._env.step(action)
        self._steps += 1
        score = float(raw["score"])
        reward = score - self._score
        self._score = score
        won = bool(raw["tasksuccess"])
        self._done = (bool(game_done) or won or bool(raw["taskfailure"])
                      or self._steps >= self.env_step_limit)
        self._admissible = [str(a) for a in raw["validActions"]]
        info = {
            "won": won,
            "valid": valid,
            "anchor": self._anchor(observation, raw),
            "admissible_actions": list(self._admissible),
            "score": score,
        }
        return observation, reward, self._done, info

    def gold_actions(self) -> list[str]:
        """The game's gold (winning) action sequence for the current episode, from its start.

        Replay it until ``done``: some paths hold actions after the winning one.

        With ``generate_gold_path=False`` the path is generated on demand, which re-resets the
        game to the same seed; that is only allowed before the first step (``RuntimeError``
        after).
        """
        def regenerate() -> None:
            self._env.reset(seed=self._game_seed, gameFold=self.fold, generateGoldPath=True)

        return self._gold_path(self._game_seed is not None, regenerate,
                               lambda: self._env.getGoldActionSequence())

    # ------------------------------------------------------------------ helpers

    def _load(self, game: str) -> None:
        """Load ``game`` with its params on the JVM (``ValueError`` naming ``game_params``)."""
        self.game = None  # type: ignore[assignment]  # unknown until the load succeeds
        try:
            self._env.load(game, self._params[game])
        except ValueError as err:
            where = f"game_params.{game}" if self.multi_game else "game_params"
            raise ValueError(f"{where}: {str(err).strip()}") from None
        self.game = game

    def _anchor(self, observation: str, raw: dict[str, Any]) -> Hashable:
        parts = [observation]
        if self.include_state_in_anchor:
            parts += ["[look]", str(raw["look"]), "[inventory]", str(raw["inventory"])]
        if self.include_admissible_in_anchor:
            parts += ["[admissible]", ",".join(sorted(str(a) for a in raw["validActions"]))]
        anchor = "\n".join(parts)
        return category_anchor(self.game, anchor) if self.multi_game else anchor

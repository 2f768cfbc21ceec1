"""TextWorldExpress adapter: contract, seeds and folds, gold paths, validity, anchors, errors.

Needs the optional ``textworld_express`` package and Java >= 11; skipped otherwise. Each env
object starts one JVM (under a second), so envs are shared per module.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import pytest

pytest.importorskip("textworld_express", reason="textworld_express is not installed "
                    "(pip install 'grouprl[envs]')")

from grouprl.envs.base import RESET_INFO_KEYS, STEP_INFO_KEYS, TextEnv  # noqa: E402
from grouprl.envs.optional import java_available  # noqa: E402
from grouprl.envs.textworld_express import GAMES, TextWorldExpressEnv  # noqa: E402

needs_java = pytest.mark.skipif(not java_available(),
                                reason="TextWorldExpress needs Java (a JRE >= 11) on PATH")

UNKNOWN = "Unknown action: I'm not sure what you mean."


@pytest.fixture(scope="module")
def envs() -> Iterator[dict[str, TextWorldExpressEnv]]:
    """One train-fold env per game, made on first use and closed at the end of the module."""
    if not java_available():
        pytest.skip("TextWorldExpress needs Java (a JRE >= 11) on PATH")
    made: dict[str, TextWorldExpressEnv] = {}
    yield made
    for env in made.values():
        env.close()


def _env(envs: dict[str, TextWorldExpressEnv], game: str) -> TextWorldExpressEnv:
    if game not in envs:
        envs[game] = TextWorldExpressEnv(game)
    return envs[game]


@pytest.fixture(scope="module")
def plain() -> Iterator[TextWorldExpressEnv]:
    """Coin with an observation-only anchor, a 5-step limit and no gold path at reset."""
    if not java_available():
        pytest.skip("TextWorldExpress needs Java (a JRE >= 11) on PATH")
    env = TextWorldExpressEnv("coin", env_step_limit=5, include_admissible_in_anchor=False,
                              include_state_in_anchor=False, generate_gold_path=False)
    yield env
    env.close()


def test_games_match_package() -> None:
    from textworld_express.constants import GAME_NAMES

    assert sorted(GAMES) == sorted(GAME_NAMES)


def test_contract_types(envs: dict[str, TextWorldExpressEnv]) -> None:
    env = _env(envs, "coin")
    assert isinstance(env, TextEnv)
    obs, info = env.reset(0)
    assert isinstance(obs, str) and obs.startswith("You are in")
    assert set(RESET_INFO_KEYS) <= set(info)
    assert info["task"].startswith("Your task is to search the environment and find the coin")
    assert isinstance(info["anchor"], str) and isinstance(info["anchor"], Hashable)
    assert info["anchor"].startswith(obs)
    adm = info["admissible_actions"]
    assert isinstance(adm, list) and adm and all(isinstance(a, str) for a in adm)
    assert "look around" in adm
    assert info["game_seed"] == env.fold_seeds[0]
    obs2, reward, done, info2 = env.step("look around")
    assert isinstance(obs2, str) and type(reward) is float and type(done) is bool
    assert set(STEP_INFO_KEYS) <= set(info2)
    assert info2["won"] is False and info2["valid"] is True and done is False
    assert reward == 0.0
    assert obs2 == obs  # looking around in the start room repeats the first observation


def test_same_seed_same_game(envs: dict[str, TextWorldExpressEnv]) -> None:
    env = _env(envs, "coin")
    first = env.reset(3)
    env.step("inventory")
    again = env.reset(3)
    wrapped = env.reset(3 + len(env.fold_seeds))
    assert first == again == wrapped
    assert env.game_seed == env.fold_seeds[3]
    others = {env.reset(s)[1]["anchor"] for s in (4, 5, 6)}
    assert first[1]["anchor"] not in others


@pytest.mark.parametrize("game", GAMES)
def test_gold_actions_win(envs: dict[str, TextWorldExpressEnv], game: str) -> None:
    env = _env(envs, game)
    seeds = (0, 1, 2) if game in ("coin", "arithmetic") else (0,)
    for seed in seeds:
        _, info = env.reset(seed)
        gold = env.gold_actions()
        assert gold and all(isinstance(a, str) for a in gold)
        total, done = 0.0, False
        for action in gold:  # twc paths hold one move after the win: replay until done
            admissible = info["admissible_actions"]
            _, reward, done, info = env.step(action)
            assert info["valid"] is (action in admissible)
            assert info["valid"], f"{game} seed {seed}: gold action {action!r} not admissible"
            total += reward
            if done:
                break
        assert done and info["won"], f"{game} seed {seed}: gold path did not win"
        assert total == pytest.approx(1.0)
        assert info["score"] == pytest.approx(1.0)


def test_arithmetic_failure_is_done_not_won(envs: dict[str, TextWorldExpressEnv]) -> None:
    env = _env(envs, "arithmetic")
    env.reset(0)
    gold = env.gold_actions()  # ..., read the problem, take the right item, box it
    _, info = env.reset(0)
    for action in gold[:-2]:
        _, _, _, info = env.step(action)
    wrong = next(a for a in info["admissible_actions"]
                 if a.startswith("take ") and a != gold[-2] and "math problem" not in a)
    env.step(wrong)
    obs, reward, done, info = env.step("put " + wrong[len("take "):] + " in box")
    assert done and info["won"] is False and info["score"] < 0 and reward < 0
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("look around")


def test_invalid_action(envs: dict[str, TextWorldExpressEnv]) -> None:
    env = _env(envs, "coin")
    _, info0 = env.reset(0)
    obs, reward, done, info = env.step("dance wildly")
    assert obs == UNKNOWN
    assert info["valid"] is False and reward == 0.0 and done is False and info["won"] is False
    assert info["admissible_actions"] == info0["admissible_actions"]  # state unchanged
    assert env.step(" look around ")[3]["valid"] is True  # surrounding spaces are ignored
    assert env.step("LOOK AROUND")[3]["valid"] is False  # matching is case-sensitive
    assert env.step("take stove")[0] == UNKNOWN  # inadmissible: the game does not parse it
    help_obs, _, _, help_info = env.step("help")
    assert help_obs.startswith(info0["task"][:40]) and help_info["valid"] is False
    # The list is not minimal: opening an open door stays admissible and does nothing.
    door = next(a for a in info0["admissible_actions"] if a.startswith("open door"))
    assert env.step(door)[3]["valid"] is True
    obs, _, _, info = env.step(door)
    assert obs == "That is already open. " and info["valid"] is True


def test_folds_have_disjoint_seed_sets(envs: dict[str, TextWorldExpressEnv]) -> None:
    train = _env(envs, "coin")
    with TextWorldExpressEnv("coin", fold="dev") as dev, \
            TextWorldExpressEnv("coin", fold="test") as test:
        sets = [set(e.fold_seeds) for e in (train, dev, test)]
        assert all(len(s) >= 100 for s in sets)
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        obs_train, _ = train.reset(0)
        obs_dev, info_dev = dev.reset(0)
        assert info_dev["game_seed"] == dev.fold_seeds[0] != train.fold_seeds[0]
        assert obs_train != obs_dev


def test_anchor_separates_equal_feedback(envs: dict[str, TextWorldExpressEnv],
                                         plain: TextWorldExpressEnv) -> None:
    for env in (_env(envs, "coin"), plain):
        start, info = env.reset(0)
        obs1, _, _, info1 = env.step("xyzzy")
        for move in (a for a in info["admissible_actions"] if a.startswith("move ")):
            if env.step(move)[0].startswith("You are in"):  # not blocked by a closed door
                break
        else:
            pytest.fail("no open exit from the start room of coin seed 0")
        obs2, _, _, info2 = env.step("xyzzy")
        assert obs1 == obs2 == UNKNOWN
        if env is plain:  # observation-only anchor: the two rooms are merged
            assert info1["anchor"] == info2["anchor"] == UNKNOWN
        else:
            assert info1["anchor"] != info2["anchor"]
            assert "[admissible]\n" + ",".join(sorted(info2["admissible_actions"])) \
                in info2["anchor"]


def test_step_limit_and_lazy_gold(plain: TextWorldExpressEnv) -> None:
    plain.reset(1)
    dones = [plain.step("xyzzy")[2] for _ in range(5)]
    assert dones == [False, False, False, False, True]
    with pytest.raises(RuntimeError, match="after the episode ended"):
        plain.step("look around")
    # generate_gold_path=False: the path is made on demand before the first step only.
    obs, _ = plain.reset(1)
    gold = plain.gold_actions()
    assert gold[-1] == "take coin"
    assert plain.gold_actions() == gold
    plain.reset(2)
    plain.step("look around")
    with pytest.raises(RuntimeError, match="generate_gold_path"):
        plain.gold_actions()


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="game: unknown TextWorldExpress game 'chess'.*"
                                         "'cookingworld'.*'peckingorder'"):
        TextWorldExpressEnv("chess")
    with pytest.raises(ValueError, match="fold: got 'valid'; accepted values are 'train', 'dev'"):
        TextWorldExpressEnv("coin", fold="valid")
    with pytest.raises(ValueError, match="env_step_limit"):
        TextWorldExpressEnv("coin", env_step_limit=0)
    with pytest.raises(TypeError, match="game_params"):
        TextWorldExpressEnv("coin", game_params={"numLocations": 5})  # type: ignore[arg-type]


@needs_java
def test_bad_game_params_name_the_argument() -> None:
    with pytest.raises(ValueError, match="game_params: Unrecognized property name"):
        TextWorldExpressEnv("coin", game_params="bogus=3")


@needs_java
def test_game_name_is_case_insensitive_and_close_stops_jvm() -> None:
    env = TextWorldExpressEnv(" Coin ", game_params="numLocations=2,includeDoors=0")
    assert env.game == "coin"
    with pytest.raises(RuntimeError, match="before reset"):
        env.step("look around")
    with pytest.raises(TypeError, match="seed"):
        env.reset("0")  # type: ignore[arg-type]
    obs, info = env.reset(0)
    assert "door" not in " ".join(info["admissible_actions"])
    process = env._env._gateway.java_process
    env.close()
    assert process.poll() is not None, "the JVM is still running after close()"
    env.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        env.reset(0)


# ---------------------------------------------------------------- several games on one JVM


@pytest.fixture(scope="module")
def multi() -> Iterator[TextWorldExpressEnv]:
    """Coin and sorting on one JVM, default params."""
    if not java_available():
        pytest.skip("TextWorldExpress needs Java (a JRE >= 11) on PATH")
    env = TextWorldExpressEnv(["Coin", "sorting"])
    yield env
    env.close()


def test_single_game_has_no_category(envs: dict[str, TextWorldExpressEnv]) -> None:
    env = _env(envs, "coin")
    assert env.games == ("coin",) and env.multi_game is False
    _, info = env.reset(0)
    assert "category" not in info and isinstance(info["anchor"], str)


def test_games_alternate_by_seed_on_one_jvm(envs: dict[str, TextWorldExpressEnv],
                                            multi: TextWorldExpressEnv) -> None:
    assert multi.games == ("coin", "sorting") and multi.multi_game is True
    process = multi._env._gateway.java_process
    for seed in (0, 1, 2, 3, 5, 4):
        game = ("coin", "sorting")[seed % 2]
        obs, info = multi.reset(seed)
        single_obs, single_info = _env(envs, game).reset(seed // 2)
        assert multi.game == game and info["category"] == game
        assert obs == single_obs and info["task"] == single_info["task"]
        assert info["game_seed"] == single_info["game_seed"] == multi.fold_seeds[seed // 2]
        assert info["anchor"] == (game, single_info["anchor"])
        action = info["admissible_actions"][0]
        step = multi.step(action)
        single_step = _env(envs, game).step(action)
        assert step[:3] == single_step[:3]
        assert step[3]["anchor"] == (game, single_step[3]["anchor"])
    assert multi._env._gateway.java_process is process and process.poll() is None
    assert multi.fold_seeds_of("sorting") == _env(envs, "sorting").fold_seeds


def test_gold_path_after_switching_games(multi: TextWorldExpressEnv) -> None:
    multi.reset(0)  # coin
    _, info = multi.reset(3)  # sorting, sub-seed 1
    total, done = 0.0, False
    for action in multi.gold_actions():
        _, reward, done, info = multi.step(action)
        total += reward
        if done:
            break
    assert done and info["won"] and total == pytest.approx(1.0)


@needs_java
def test_multi_game_params_per_game() -> None:
    with TextWorldExpressEnv(["coin", "arithmetic"],
                             game_params={"coin": "numLocations=2,includeDoors=0"}) as env:
        _, info = env.reset(0)
        assert info["category"] == "coin"
        assert "door" not in " ".join(info["admissible_actions"])
        assert env.reset(1)[1]["category"] == "arithmetic"
    with pytest.raises(ValueError, match="game_params.arithmetic: Unrecognized property name"):
        TextWorldExpressEnv(["coin", "arithmetic"], game_params={"arithmetic": "bogus=3"})


def test_multi_game_argument_errors() -> None:
    with pytest.raises(TypeError, match="game: expected a game name or a non-empty list"):
        TextWorldExpressEnv([])
    with pytest.raises(ValueError, match=r"game\[1\]: unknown TextWorldExpress game 'chess'"):
        TextWorldExpressEnv(["coin", "chess"])
    with pytest.raises(ValueError, match=r"game\[1\]: 'coin' is listed twice"):
        TextWorldExpressEnv(["coin", "COIN"])
    with pytest.raises(ValueError, match="game_params.sorting: 'sorting' is not one of the "
                                         "games"):
        TextWorldExpressEnv(["coin", "twc"], game_params={"sorting": ""})
    with pytest.raises(TypeError, match="game_params.coin: expected a str"):
        TextWorldExpressEnv(["coin", "twc"], game_params={"coin": 5})
    with pytest.raises(TypeError, match=r"game_params: expected a str or a dict"):
        TextWorldExpressEnv(["coin", "twc"], game_params=["x"])  # type: ignore[arg-type]

"""Several configs of one `push run`: their slugs, state keys and costs, decided before anything is pushed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ichkaggle.errors import UserError
from ichkaggle.experiment import load_experiment
from ichkaggle.kaggle.flow import Layout
from ichkaggle.kaggle.parts import MAX_SLUG
from ichkaggle.kaggle.plan import chain_rounds, make_plan, session_rounds, total_lines
from ichkaggle.kaggle.runset import (
    RunConfig,
    check_slugs,
    fold_key,
    fold_slug,
    infer_slug,
    run_configs,
    settings_groups,
    slug_tag,
    state_identity,
    state_name,
)


def test_one_config_keeps_todays_names_and_several_get_their_own():
    layout = Layout.find()
    (one,), folds = run_configs(["exp_00"], [0, 1], layout)
    assert one.tag == "" and fold_key(one, 1) == "1" and fold_slug("ichkaggle-train", one, 1, 2) == \
        "ichkaggle-train-fold1-s2"
    assert state_name([one], folds) == "exp_00-folds0-1.json"
    assert state_identity([one], folds, "alice") == {"config": "exp_00", "folds": [0, 1], "owner": "alice"}
    assert infer_slug("ichkaggle-infer", [one]) == "ichkaggle-infer"
    two, _ = run_configs(["exp_00", "b0_baseline"], [0, 1], layout)
    assert [c.tag for c in two] == ["exp-00", "b0-baseline"] and fold_key(two[1], 0) == "b0_baseline/0"
    assert state_name(two, folds) == "exp_00+b0_baseline-folds0-1.json"
    assert state_identity(two, folds, "alice")["configs"] == ["exp_00", "b0_baseline"]
    assert fold_slug("ichkaggle-train", two[1], 4, 3) == "ichkaggle-train-b0-baseline-fold4-s3"
    slug = infer_slug("ichkaggle-infer", two)
    assert slug == infer_slug("ichkaggle-infer", two) != infer_slug("ichkaggle-infer", two[::-1])
    assert len(settings_groups(two)) == 1  # both 224 px JPEG: one prepare
    mixed, _ = run_configs(["exp_00", "rehearsal"], [0], layout)
    assert len(settings_groups(mixed)) == 2


def test_slug_tags_are_what_kaggle_takes():
    assert slug_tag("B5_T4x2.v2") == "b5-t4x2-v2" and slug_tag("___") == "config"
    assert len(slug_tag("a" * 40)) == 16


def test_a_slug_too_long_for_kaggle_is_refused():
    configs = [RunConfig("x", None, "a" * 16)]
    check_slugs("ichkaggle-train", configs, [4])
    with pytest.raises(UserError, match=f"at most {MAX_SLUG}"):
        check_slugs("my-own-much-longer-train-kernel-name", configs, [4])


def test_configs_of_other_folds_or_one_name_are_refused(tmp_path):
    layout = Layout.find()
    with pytest.raises(UserError, match="a blend needs the same folds"):
        run_configs(["exp_00", "demo"], [0], layout)
    with pytest.raises(UserError, match="at least one --config"):
        run_configs([], [0], layout)


def test_several_plans_are_summed():
    plans = [make_plan(load_experiment(c), 5, "NvidiaTeslaT4") for c in ("exp_00", "b5_t4x2")]
    lines = total_lines(plans)
    total = sum(p.total_hours for p in plans)
    assert f"{total:.1f} in total" in lines[1] and "exp_00" in lines[1] and "b5_t4x2" in lines[1]
    rounds = chain_rounds([p.sessions_per_fold for p in plans for _ in range(5)], 2)
    assert f"~{rounds} round(s)" in lines[2] and rounds >= max(p.rounds for p in plans)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=10), st.integers(1, 4))
def test_rounds_of_mixed_chains_are_bounded(chains, at_once):
    rounds = chain_rounds(chains, at_once)
    assert max(max(chains), -(-sum(chains) // at_once)) <= rounds <= sum(chains)
    assert chain_rounds([chains[0]] * len(chains), at_once) == session_rounds(len(chains), chains[0], at_once)

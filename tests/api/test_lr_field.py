"""training.lr takes a positive number or `auto` (the default), from YAML, env or --set alike."""

import pytest

from kubetune.api import ConfigError, load_config


def test_lr_defaults_to_auto_and_numbers_still_parse():
    assert load_config(None).training.lr == "auto"
    assert load_config(None, sets=["training.lr=1e-3"]).training.lr == 1e-3
    assert load_config(None, sets=["training.lr=auto"]).training.lr == "auto"


@pytest.mark.parametrize("bad", ["fast", "0", "-1e-4"])
def test_bad_lr_is_named(bad):
    with pytest.raises(ConfigError, match=r"training\.lr"):
        load_config(None, sets=[f"training.lr={bad}"])


def test_eval_metric_choices():
    assert load_config(None).training.eval_metric == "loss"
    assert load_config(None, sets=["training.eval_metric=exact_match"]).training.eval_metric == "exact_match"
    with pytest.raises(ConfigError, match=r"training\.eval_metric"):
        load_config(None, sets=["training.eval_metric=bleu"])

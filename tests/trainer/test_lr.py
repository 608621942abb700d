"""`training.lr: auto`: the rule's numbers, what it reads from a model config, and that a number wins."""

from types import SimpleNamespace

import pytest

from kubetune.trainer.lr import BOUNDS, auto_lr, hidden_size, resolve


def test_builtin_model_gets_the_published_fit():
    # 5e-5 * 10 * (2000/576)^0.781: SmolLM2-135M is a Llama-shaped model of width 576.
    choice = auto_lr(576, "llama", 32)
    assert choice.lr == pytest.approx(1.32e-3, rel=0.01)
    assert "576" in choice.reason and "llama" in choice.reason


def test_wider_models_get_lower_rates_and_7b_lands_near_the_old_convention():
    rates = [auto_lr(width, "llama", 32).lr for width in (576, 2048, 4096, 8192)]
    assert rates == sorted(rates, reverse=True)
    assert 2e-4 < auto_lr(4096, "llama", 32).lr < 3.5e-4  # Llama-2-7B: ~2.9e-4


def test_qwen_family_uses_its_flatter_exponent():
    assert auto_lr(4096, "qwen2", 32).lr == pytest.approx(5e-4 * (2000 / 4096) ** 0.0775, rel=0.01)


def test_alpha_scales_inversely():
    assert auto_lr(576, "llama", 64).lr == pytest.approx(auto_lr(576, "llama", 32).lr / 2, rel=0.01)


def test_absurd_widths_are_clamped_and_say_so():
    choice = auto_lr(1, "llama", 32)
    assert choice.lr == BOUNDS[1] and "clamped" in choice.reason


def test_explicit_number_wins():
    config = SimpleNamespace(hidden_size=576, model_type="llama")
    assert resolve(2e-4, config, 32).lr == 2e-4
    assert resolve("auto", config, 32).lr == auto_lr(576, "llama", 32).lr


def test_width_is_found_in_a_text_config_and_its_absence_is_named():
    assert hidden_size(SimpleNamespace(text_config=SimpleNamespace(hidden_size=3072))) == 3072
    assert hidden_size(SimpleNamespace(n_embd=768)) == 768
    with pytest.raises(ValueError, match=r"training\.lr: auto needs the model's hidden size"):
        hidden_size(SimpleNamespace(model_type="mystery"))

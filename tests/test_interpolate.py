"""WiSE-FT weight interpolation: the arithmetic, the choice on validation, (tests/test_train_loop.py trains with it)."""

import pytest
import torch

from animal_reid.training.interpolate import choose_alpha, interpolate_state


def test_interpolate_state_mixes_floats_and_keeps_counters():
    start = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3), "only_trained": torch.ones(1)}
    trained = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(10), "only_trained": torch.full((1,), 5.0)}
    start["only_trained"] = torch.ones(2)  # shape differs: not mixed
    out = interpolate_state(start, trained, 0.25)
    assert out["w"].tolist() == [1.0, 3.0]  # 0.75 * start + 0.25 * trained
    assert out["n"].item() == 10 and out["only_trained"].tolist() == [5.0]
    assert torch.equal(interpolate_state(start, trained, 1.0)["w"], trained["w"])
    assert torch.equal(interpolate_state(start, trained, 0.0)["w"], start["w"])
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state(start, trained, 1.5)


def test_choose_alpha_keeps_the_best_on_validation_ties_to_the_trained_side():
    table = {0.3: 0.50, 0.6: 0.70, 0.8: 0.70}
    chosen, scored = choose_alpha(lambda a: {"top1": table[a]}, [0.8, 0.3, 0.6], {"top1": 0.65}, "top1")
    assert chosen == 0.8 and set(scored) == {"1", "0.3", "0.6", "0.8"}
    chosen, _ = choose_alpha(lambda a: {"top1": 0.1}, [0.5], {"top1": 0.65}, "top1")
    assert chosen == 1.0  # the trained model wins: nothing replaces it

"""WeightEMA: the moving average's arithmetic, its warm-up, buffers, swapping and checkpoint round trip."""

import pytest
import torch

from animal_reid.training.ema import WeightEMA


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def test_decay_must_lie_strictly_between_0_and_1():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ema_decay"):
            WeightEMA(bad)


def test_rate_warms_up_to_the_decay():
    ema = WeightEMA(0.99)
    rates = []
    for t in range(1000):  # (1 + t) / (10 + t) reaches 0.99 at t = 890
        ema.updates = t
        rates.append(ema.rate())
    assert rates[0] == pytest.approx(0.1) and rates[1] == pytest.approx(2 / 11)
    assert all(a <= b for a, b in zip(rates[:-1], rates[1:], strict=True)) and rates[-1] == 0.99


def test_update_averages_floats_and_copies_integer_buffers():
    model, ema = _model(), WeightEMA(0.5)
    ema.update(model)  # starts at the current weights
    first = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(ema.shadow[k], first[k]) for k in first)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked.add_(7)
    d = ema.rate()  # min(0.5, 2 / 11)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["0.weight"], first["0.weight"] + (1 - d) * 1.0)
    torch.testing.assert_close(ema.shadow["1.running_mean"], first["1.running_mean"] + (1 - d) * 2.0)
    assert ema.shadow["1.num_batches_tracked"].item() == first["1.num_batches_tracked"].item() + 7
    assert ema.updates == 2


def test_applied_swaps_the_average_in_and_puts_the_live_weights_back():
    model, ema = _model(), WeightEMA(0.9)
    with ema.applied(model):  # no average yet: the model is left alone
        pass
    ema.update(model)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    live = model[0].weight.detach().clone()
    with ema.applied(model):
        torch.testing.assert_close(model[0].weight, ema.shadow["0.weight"])
        assert not torch.equal(model[0].weight, live)
    assert torch.equal(model[0].weight, live)
    with pytest.raises(RuntimeError, match="inside"), ema.applied(model):
        raise RuntimeError("inside")
    assert torch.equal(model[0].weight, live)  # put back after an error too


def test_state_dict_round_trip_continues_the_same_average():
    model, a = _model(), WeightEMA(0.8)
    for _ in range(3):
        a.update(model)
        with torch.no_grad():
            model[0].bias.add_(0.5)
    b = WeightEMA(0.1)
    b.load_state_dict(a.state_dict())
    assert b.decay == 0.8 and b.updates == 3
    a.update(model)
    b.update(model)
    assert all(torch.equal(a.shadow[k], b.shadow[k]) for k in a.shadow)

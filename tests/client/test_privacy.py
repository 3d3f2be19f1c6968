import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.client_app import train_locally
from client.config import PrivacyConfig
from client.errors import ClientConfigError
from client.privacy import load_accountant, save_accountant
from shared_models.models import build_model
from tests.client.digits_client import digits_client


def _arrays():
    return ArrayRecord(build_model("digits-cnn", input_shape=(1, 8, 8), num_classes=10, seed=0).state_dict())


def test_accountant_survives_a_round_trip_through_the_node_state():
    state = RecordDict()
    acc = load_accountant(state)
    acc.history = [(1.1, 0.25, 12), (0.9, 0.5, 3)]
    save_accountant(state, acc)
    again = load_accountant(state)
    assert again.history == acc.history
    assert again.get_epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5))


def test_epsilon_accumulates_across_rounds_and_stays_within_budget():
    cfg = digits_client(PrivacyConfig(target_epsilon=3.0, planned_rounds=3))
    state = RecordDict()
    eps = []
    for r in (1, 2, 3):
        out = train_locally(cfg, _arrays(), ConfigRecord({"server-round": r}), state)
        assert out["metrics"]["refused"] == 0
        eps.append(out["metrics"]["epsilon"])
    assert eps[0] < eps[1] < eps[2] <= 3.0
    assert eps[2] > 2.5, "noise calibrated for 3 rounds should spend most of the budget in 3 rounds"


def test_the_noise_is_calibrated_once_from_the_first_round_on(monkeypatch):
    """The search for the noise multiplier takes seconds of RDP arithmetic; its result goes into the node's state on
    the first round (whose state starts empty) and is reused after, not searched again in round 2."""
    from client import privacy

    searches = []
    real = privacy.get_noise_multiplier
    monkeypatch.setattr(privacy, "get_noise_multiplier", lambda **kw: searches.append(kw) or real(**kw))
    cfg = digits_client(PrivacyConfig(target_epsilon=3.0, planned_rounds=3))
    state = RecordDict()
    sigmas = []
    for r in (1, 2, 3):
        out = train_locally(cfg, _arrays(), ConfigRecord({"server-round": r}), state)
        assert privacy.CALIBRATION_KEY in state, f"round {r} left the calibration out of the node's state"
        sigmas.append(out["metrics"]["noise-multiplier"])
    assert len(searches) == 1
    assert sigmas[0] == sigmas[1] == sigmas[2] > 0


def test_the_plan_evaluates_the_rdp_curve_once_for_a_round_that_continues_the_last_and_gets_the_same_epsilon(
    monkeypatch,
):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    from client.privacy import plan_round

    evaluations = []
    real = analysis.compute_rdp
    monkeypatch.setattr(analysis, "compute_rdp", lambda **kw: evaluations.append(kw) or real(**kw))
    accountant = RDPAccountant()
    accountant.history = [(1.0, 0.1, 20)]  # round 1 of 300 examples, batches of 30, 2 epochs
    config = PrivacyConfig(noise_multiplier=1.0, target_epsilon=50.0, planned_rounds=3)
    plan = plan_round(config, accountant, num_examples=300, batch_size=30, local_epochs=2)
    assert (plan.noise_multiplier, plan.sample_rate, plan.steps) == (1.0, 0.1, 20)
    assert len(evaluations) == 1
    monkeypatch.setattr(analysis, "compute_rdp", real)
    reference = RDPAccountant()
    reference.history = [(1.0, 0.1, 20), (1.0, 0.1, 20)]  # the two rounds as separate entries, as before
    assert plan.epsilon_after == pytest.approx(reference.get_epsilon(config.target_delta), rel=1e-12)


def test_a_client_refuses_the_round_that_would_exceed_its_budget():
    cfg = digits_client(PrivacyConfig(noise_multiplier=1.0, target_epsilon=6.0))  # 2 rounds fit, the 3rd would not
    state = RecordDict()
    first = train_locally(cfg, _arrays(), ConfigRecord({"server-round": 1}), state)
    assert first["metrics"]["refused"] == 0 and "arrays" in first
    spent = first["metrics"]["epsilon"]
    rounds = 1
    out = first
    while out["metrics"]["refused"] == 0:
        rounds += 1
        out = train_locally(cfg, _arrays(), ConfigRecord({"server-round": rounds}), state)
        assert rounds < 20
    assert "arrays" not in out
    assert "privacy budget exhausted" in str(out["refusal"]["reason"])
    assert out["metrics"]["epsilon"] <= 6.0
    assert rounds == 3
    assert out["metrics"]["epsilon"] >= spent
    # refusing spends nothing: the saved history is unchanged by the refused round
    before = load_accountant(state).history
    train_locally(cfg, _arrays(), ConfigRecord({"server-round": rounds + 1}), state)
    assert load_accountant(state).history == before


def test_without_dp_there_is_no_epsilon_and_weights_change():
    cfg = digits_client(PrivacyConfig(enabled=False))
    out = train_locally(cfg, _arrays(), ConfigRecord({"server-round": 1}), RecordDict())
    assert "epsilon" not in out["metrics"]
    before, after = _arrays().to_torch_state_dict(), out["arrays"].to_torch_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert out["metrics"]["num-examples"] in (359, 360)  # a quarter of the 1,438 training images


def test_arrayrecord_round_trip_keeps_every_tensor():
    model = build_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
    back = ArrayRecord(model.state_dict()).to_torch_state_dict()
    assert set(back) == set(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_epsilon": 0.0}, "target-epsilon"),
        ({"target_delta": 1.5}, "target-delta"),
        ({"grad_sample_mode": "magic"}, "dp-mode"),
    ],
)
def test_bad_privacy_settings_are_clear(kwargs, message):
    with pytest.raises(ClientConfigError, match=message):
        PrivacyConfig(**kwargs)

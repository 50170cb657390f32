"""ActNorm's init flag: a Python bool after init (no buffer read, no device sync per call),
kept in step with the ``initialized`` buffer through state-dict loads."""

from __future__ import annotations

import torch

from dgmood.nn.layers import ActNormLayer


def test_ready_follows_init_and_loaded_state() -> None:
    fresh, trained = ActNormLayer(3), ActNormLayer(3)
    assert not fresh.ready
    trained.train()
    trained(torch.randn(16, 3, 4, 4) * 5 + 2)  # data-dependent init
    assert trained.ready and bool(trained.initialized)
    bias = trained.bias.detach().clone()
    trained(torch.randn(16, 3, 4, 4))  # no second init
    torch.testing.assert_close(trained.bias.detach(), bias)

    trained.load_state_dict(fresh.state_dict())  # back to an uninitialised state
    assert not trained.ready
    loaded = ActNormLayer(3)
    state = {k: v.clone() for k, v in fresh.state_dict().items()}
    state["initialized"] = torch.tensor(True)
    state["bias"] = torch.full((1, 3, 1, 1), 7.0)
    loaded.load_state_dict(state)
    loaded.train()
    loaded(torch.randn(16, 3, 4, 4))  # an initialised state is not initialised again
    assert loaded.ready and loaded.bias.detach().eq(7.0).all()

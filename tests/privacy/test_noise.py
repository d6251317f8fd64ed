"""The activation-noise defense: its scale, and that the link sends noisy h and passes the gradient back."""

from __future__ import annotations

import torch

from atlas_pl.parties.link import LocalLink, RouteLink, TrafficLedger
from atlas_pl.parties.messages import ActivationGrads, Activations
from atlas_pl.privacy.noise import add_activation_noise, masked_rms


def test_noise_has_the_stated_scale_relative_to_rms() -> None:
    torch.manual_seed(0)
    h = 3.0 * torch.randn(8, 20, 64)
    mask = torch.ones(8, 20, dtype=torch.long)
    for scale in (0.5, 2.0):
        noisy = add_activation_noise(h, mask, scale, torch.Generator().manual_seed(1))
        ratio = float(masked_rms(noisy - h, mask) / masked_rms(h, mask))
        assert abs(ratio - scale) < 0.03 * scale


def test_zero_noise_is_the_same_tensor_and_draws_nothing() -> None:
    h, mask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.long)
    state = torch.random.get_rng_state()
    assert add_activation_noise(h, mask, 0.0) is h
    assert torch.equal(torch.random.get_rng_state(), state)


class _Host:
    """A host that records what it received and returns a known gradient."""

    def __init__(self) -> None:
        self.received: list[torch.Tensor] = []

    def process(self, message: Activations) -> ActivationGrads:
        self.received.append(message.hidden)
        return ActivationGrads(torch.tensor(0.5), torch.ones_like(message.hidden))

    def infer(self, client: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.received.append(hidden)
        return hidden.sum(-1)


def test_a_noisy_link_sends_noisy_h_and_returns_the_hosts_gradient() -> None:
    host = _Host()
    link = LocalLink(0, host, TrafficLedger(), noise=1.0)  # type: ignore[arg-type]
    h, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    reply = link.exchange(Activations(0, h, mask, torch.zeros(2, dtype=torch.long)))
    assert not torch.allclose(host.received[0], h)
    assert torch.equal(reply.grad, torch.ones_like(h))  # straight through: d(h + n)/dh = I
    first = link.infer(h, mask, torch.Generator().manual_seed(3))
    again = link.infer(h, mask, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and not torch.allclose(first, h.sum(-1))


def test_a_link_without_noise_sends_h_itself() -> None:
    host = _Host()
    link = LocalLink(0, host, TrafficLedger())  # type: ignore[arg-type]
    h, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    link.exchange(Activations(0, h, mask, torch.zeros(2, dtype=torch.long)))
    assert host.received[0] is h


def test_a_route_of_peers_sends_noisy_h_too() -> None:
    host = _Host()
    link = RouteLink(0, host, TrafficLedger(), ["device/1", "device/2"], noise=0.5)  # type: ignore[arg-type]
    h, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    link.exchange(Activations(0, h, mask, torch.zeros(2, dtype=torch.long)))
    assert not torch.allclose(host.received[0], h)


def test_rms_in_half_precision_is_not_lost_to_overflow() -> None:
    h = torch.randn(16, 64, 384)
    mask = torch.ones(16, 64, dtype=torch.long)
    for dtype in (torch.float16, torch.bfloat16):
        assert abs(float(masked_rms(h.to(dtype), mask)) - float(masked_rms(h, mask))) < 0.02

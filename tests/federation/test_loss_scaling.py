"""fp16 loss scaling across the split: the server half scales its own backward, the client gets the true
gradient, a server overflow skips the server's step and reaches the client as a non-finite gradient, and the
scales survive a round checkpoint.

GradScaler runs on CPU, so these check the arithmetic and the wiring here; on CUDA the same code runs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from atlas_pl.lightning.modules import ServerModule
from atlas_pl.lightning.trainers import server_grad_scaler
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel
from atlas_pl.settings import CheckpointSettings, TrainerSettings
from atlas_pl.tracking.checkpoint import latest_checkpoint
from atlas_pl.tracking.resume import RoundCheckpointer


def _server_and_input(seed: int = 0) -> tuple[SplitClientModel, dict[str, torch.Tensor]]:
    spec = REGISTRY["tiny_bert"]
    model, _ = load_base(spec, attn_implementation="eager")
    split = SplitClientModel(SharedBackbone(spec, model), 2, {b: 4 for b in range(4)}, 2, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # LoRA B starts at zero: give the server adapter values so every factor learns
        for p in split.server.adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    hidden_size = model.config.hidden_size
    batch = {
        "hidden": torch.randn(4, 12, hidden_size, generator=gen),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": torch.tensor([0, 1, 1, 0]),
    }
    return split, batch


def _step(scaler: torch.amp.GradScaler | None, hidden_scale: float = 1.0):
    split, batch = _server_and_input()
    server = ServerModule(split.server, lr=1e-2, scaler=scaler)
    loss, grad = server.process(batch["hidden"] * hidden_scale, batch["attention_mask"], batch["labels"])
    return loss, grad, [p.detach().clone() for p in server.optimizer.param_groups[0]["params"]]


def test_scaled_server_step_sends_and_applies_the_unscaled_gradient() -> None:
    loss, grad, params = _step(None)
    # growth after every good step: dL/dh must be divided by the scale the backward used, not the grown one
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    scaled_loss, scaled_grad, scaled_params = _step(scaler)
    # a power-of-two scale is exact in float: the same loss, dL/dh and updated adapter, bit for bit
    assert torch.equal(scaled_loss, loss)
    assert torch.equal(scaled_grad, grad)
    assert all(torch.equal(p, q) for p, q in zip(scaled_params, params))
    initial = [p.detach() for p in _server_and_input()[0].server.adapter.parameters()]
    assert all(not torch.equal(p, q) for p, q in zip(params, initial))  # the step did move every factor
    assert scaler.get_scale() == 2.0**13  # a good step: the scale grew after it


def test_server_overflow_skips_its_step_and_reaches_the_client_as_non_finite() -> None:
    split, _ = _server_and_input()
    before = [p.detach().clone() for p in split.server.adapter.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _, grad, after = _step(scaler, hidden_scale=float("inf"))
    assert not torch.isfinite(grad).all()  # the client's scaler sees it and skips its own step
    assert all(torch.equal(p, q) for p, q in zip(after, before))  # server step skipped
    assert scaler.get_scale() == 2.0**11  # backed off


def _trainer(precision: str) -> TrainerSettings:
    return TrainerSettings(
        accelerator="auto", devices=1, precision=precision, deterministic=True, num_threads=0
    )


def test_server_scaler_only_for_fp16_mixed_on_cuda() -> None:
    cfg = _trainer("16-mixed")
    assert server_grad_scaler(cfg, torch.device("cpu")) is None  # Lightning runs bf16-mixed on CPU
    assert server_grad_scaler(_trainer("32-true"), torch.device("cuda")) is None
    if torch.cuda.is_available():
        assert isinstance(server_grad_scaler(cfg, torch.device("cuda")), torch.amp.GradScaler)


def test_loss_scales_survive_a_round_checkpoint(tmp_path) -> None:
    keep = CheckpointSettings(enabled=True, keep=2)
    config = {"seed": 0}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    split, batch = _server_and_input()
    server = ServerModule(split.server, lr=1e-2, scaler=scaler)
    server.process(batch["hidden"] * float("inf"), batch["attention_mask"], batch["labels"])  # backs off
    server.process(batch["hidden"], batch["attention_mask"], batch["labels"])  # one good step: tracker 1
    saved = copy.deepcopy(scaler.state_dict())
    assert saved["scale"] == 2.0**11 and saved["_growth_tracker"] == 1
    model = torch.nn.Linear(2, 2)
    RoundCheckpointer(keep, config, tmp_path, None, 0.0).save(
        1,
        json_state={},
        modules={"model/0": model},
        optimizers={},
        generators=[],
        scalers={"scaler/server/0": scaler, "off": torch.amp.GradScaler("cpu", enabled=False)},
    )
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    assert checkpoint is not None and set(checkpoint.state["scalers"]) == {"scaler/server/0"}
    fresh = torch.amp.GradScaler("cpu")
    RoundCheckpointer(keep, config, tmp_path, checkpoint, 0.0).restore(
        modules={"model/0": model}, optimizers={}, generators=[], scalers={"scaler/server/0": fresh}
    )
    assert fresh.state_dict() == saved
    assert fresh.get_scale() == pytest.approx(2.0**11, rel=0)


def test_a_job_scales_every_server_and_checkpoints_every_scale(tmp_path, monkeypatch, capture_models) -> None:
    """The loop gives each server a scaler and saves every client's and server's scale after each round.

    On CPU Lightning would run 16-mixed as bf16-mixed and no scaler would exist, so the job gets CPU
    scalers by hand: a fp16 Lightning precision plugin for the clients, GradScaler("cpu") for the servers.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    from atlas_pl.engines import inprocess as loop
    from atlas_pl.run import run_job

    from .test_federation import _cfg

    real_trainer = loop.make_trainer

    def fp16_trainer(cfg, device, callbacks=()):
        trainer = real_trainer(cfg, device, callbacks)
        scaler = torch.amp.GradScaler("cpu", growth_interval=1)
        trainer.strategy.precision_plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
        return trainer

    servers: list[torch.amp.GradScaler] = []

    def cpu_scaler(cfg, device):
        servers.append(torch.amp.GradScaler("cpu", growth_interval=1))
        return servers[-1]

    monkeypatch.setattr(loop, "make_trainer", fp16_trainer)
    monkeypatch.setattr(loop, "server_grad_scaler", cpu_scaler)
    run_job(_cfg(tmp_path, "ablation=local_only", "fed.rounds=1"))
    trainers = capture_models["result"].trainers
    state = latest_checkpoint(tmp_path / "checkpoints").state["scalers"]
    n = len(trainers)
    assert len(servers) == n and set(state) == {f"precision/{k}" for k in range(n)} | {
        f"scaler/server/{k}" for k in range(n)
    }
    for k in range(n):
        # both scales were used (each good step doubles them here), and what was saved is what they reached
        assert state[f"scaler/server/{k}"] == servers[k].state_dict()
        assert state[f"precision/{k}"] == trainers[k].precision_plugin.scaler.state_dict()
        assert servers[k].get_scale() > 2.0**16 and trainers[k].precision_plugin.scaler.get_scale() > 2.0**16

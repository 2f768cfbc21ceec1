"""Spec §4.4 checks 2 and 5 on a tiny model: the auxiliary gradient reaches only positions up to
the last prompt token (hooks on the embeddings and every decoder layer), γ = 0 is plain SFT
bitwise (loss and weights after two AdamW steps), the SFT part is untouched by the hidden-state
capture, and micro-batching does not change the step."""

from __future__ import annotations

import copy

import pytest
import torch
from presafe_testing import sft_loss, tiny_lm, toy_rows

from grouprl.policy import response_logprobs
from grouprl.presafe import AuxHead, aux_bce, capture_hidden_states, last_prompt_state
from grouprl.train.presafe_learner import head_state, load_head_state, presafe_step


def _layer_outputs(model):
    """Hooks keeping the output of the embeddings and of every decoder layer (grads kept)."""
    kept = []

    def keep(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        out.retain_grad()
        kept.append(out)

    core = model.model
    handles = [core.embed_tokens.register_forward_hook(keep)]
    handles += [layer.register_forward_hook(keep) for layer in core.layers]
    return kept, handles


def _forward(model, rows, with_aux: bool):
    kept, handles = _layer_outputs(model)
    try:
        with capture_hidden_states(model) as cap:
            logp, _ = response_logprobs(model, rows["prompt_ids"], rows["prompt_mask"],
                                        rows["target_ids"], rows["target_mask"])
    finally:
        for h in handles:
            h.remove()
    z = last_prompt_state(cap.last, rows["prompt_ids"].shape[1])
    return kept, logp, z


def test_aux_gradient_only_reaches_positions_up_to_the_last_prompt_token():
    model, tok = tiny_lm()
    rows = toy_rows(tok).rows(torch.arange(6))
    width = rows["prompt_ids"].shape[1]
    head = AuxHead(model.config.hidden_size)
    kept, _, z = _forward(model, rows, True)
    aux_bce(head(z), rows["signal"]).backward()
    assert len(kept) == 1 + model.config.num_hidden_layers
    for out in kept:
        grad = out.grad
        assert grad.shape[1] == width + rows["target_ids"].shape[1]
        assert torch.count_nonzero(grad[:, width:]) == 0            # no response position
        assert torch.count_nonzero(grad[:, width - 1]) > 0          # the last prompt token
    assert torch.count_nonzero(kept[0].grad[:, :width - 1]) > 0     # earlier prompt tokens too
    # the check can fail: the SFT loss does reach response positions
    model.zero_grad()
    kept, logp, _ = _forward(model, rows, False)
    (-(logp * rows["target_mask"]).sum()).backward()
    assert torch.count_nonzero(kept[0].grad[:, width:]) > 0


def _optimizer(params):
    return torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def test_gamma_zero_is_plain_sft_bitwise():
    model, tok = tiny_lm()
    reference = copy.deepcopy(model)
    data = toy_rows(tok)
    head = AuxHead(model.config.hidden_size)
    head_before = copy.deepcopy(head.state_dict())
    opt = _optimizer(list(torch.nn.ModuleList([model, head]).parameters()))
    ref_opt = _optimizer(list(reference.parameters()))
    params = [p for g in opt.param_groups for p in g["params"]]
    idx = torch.tensor([4, 0, 2, 5, 1, 3])
    for _ in range(2):
        m = presafe_step(model, head, opt, params, data, idx, gamma=0.0,
                         micro_batch_size=6, grad_clip=1.0)
        ref_opt.zero_grad()
        loss = sft_loss(reference, data.rows(idx))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 1.0)
        ref_opt.step()
        assert m["presafe/loss"] == m["presafe/sft_loss"] == loss.item()
        assert "presafe/aux_loss" not in m
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name
    for key, value in head.state_dict().items():              # no gradient reached the head
        assert torch.equal(value, head_before[key])


def test_capture_leaves_the_sft_loss_bitwise_and_gamma_trains_the_head():
    model, tok = tiny_lm()
    data = toy_rows(tok)
    idx = torch.arange(6)
    plain = sft_loss(model, data.rows(idx)).item()
    head = AuxHead(model.config.hidden_size)
    opt = _optimizer(list(torch.nn.ModuleList([model, head]).parameters()))
    params = [p for g in opt.param_groups for p in g["params"]]
    w0 = head.linear.weight.detach().clone()
    m = presafe_step(model, head, opt, params, data, idx, gamma=0.5, micro_batch_size=6,
                     grad_clip=1.0)
    assert m["presafe/sft_loss"] == plain
    assert m["presafe/loss"] == pytest.approx(plain + 0.5 * m["presafe/aux_loss"], rel=1e-6)
    assert 0.0 <= m["presafe/aux_accuracy"] <= 1.0 and "presafe/aux_prob_harmful" in m
    assert not torch.equal(head.linear.weight, w0)


def test_micro_batches_give_the_batch_gradient():
    model, tok = tiny_lm()
    data = toy_rows(tok)
    grads = []
    for micro in (6, 2):
        m = copy.deepcopy(model)
        head = AuxHead(m.config.hidden_size)
        params = list(torch.nn.ModuleList([m, head]).parameters())
        opt = torch.optim.SGD(params, lr=1.0)
        presafe_step(m, head, opt, params, data, torch.arange(6), gamma=0.5,
                     micro_batch_size=micro, grad_clip=None)
        grads.append(torch.cat([(p - q).flatten() for p, q in
                                zip(params, torch.nn.ModuleList([model, AuxHead(
                                    m.config.hidden_size)]).parameters())]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_head_state_round_trip_is_exact():
    head, other = AuxHead(16, seed=1), AuxHead(16, seed=2)
    load_head_state(other, head_state(head))
    for key, value in head.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)

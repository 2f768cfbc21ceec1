"""grouprl.policy.generate: recorded log-probs = teacher-forced log-probs, greedy = slow loop,
stop strings, truncation, determinism, chunking."""

from __future__ import annotations

import pytest
import torch

from grouprl.policy import Generation, build_tiny_policy, generate, response_logprobs
from testing_utils import sokoban_corpus

ACTION_TOKENS = ("<action>", "</action>")


@pytest.fixture(scope="module")
def policy():
    model, tok = build_tiny_policy(sokoban_corpus(120, seed=0, rows=5, cols=6), vocab_size=400,
                                   special_tokens=ACTION_TOKENS, seed=0)
    model.eval()
    return model, tok


def _force_chain(model, chain: list[int], strength: float = 40.0):
    """Add ``strength`` to the logit of chain[i+1] wherever the input token is chain[i].

    A forward hook on the whole model, so it acts identically in generation (prefill and cached
    steps) and in the teacher-forced forward of response_logprobs.
    """
    assert len(set(chain[:-1])) == len(chain) - 1, "chain keys must be distinct"
    table = dict(zip(chain[:-1], chain[1:]))

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"][:, -output.logits.shape[1]:]
        bias = torch.zeros_like(output.logits)
        for src, dst in table.items():
            bias[..., dst] += strength * (ids == src).to(bias.dtype)
        output.logits = output.logits + bias
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


def _prompts(tok) -> list[list[int]]:
    base = tok("You are playing Sokoban.\n#_OX√P\n##PS_#\nMove: ")["input_ids"]
    return [base[-3:], base, base[-11:], base[-3:], base[-20:]]  # mixed lengths, a repeat


def _masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b) * mask).detach().abs().max())


def test_recorded_logprobs_match_teacher_forcing_with_left_padding(policy):
    model, tok = policy
    prompts = _prompts(tok)
    eos = tok.eos_token_id
    # rows whose prompt ends with the ":" token are pushed to EOS after one token, so response
    # lengths differ and finished rows are padded while the others keep sampling
    last = prompts[0][-1]
    handle = _force_chain(model, [last, tok.convert_tokens_to_ids("<action>"), eos])
    try:
        gen = generate(model, tok, prompts + [prompts[1][:-1]], max_new_tokens=6,
                       temperature=0.8, top_p=0.95, generator=torch.Generator().manual_seed(3))
        logp, ent = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids,
                                      gen.response_mask, temperature=0.8, with_entropy=True)
    finally:
        handle.remove()
    mask = gen.response_mask
    assert gen.prompt_mask.sum(-1).tolist() == [len(p) for p in prompts + [prompts[1][:-1]]]
    assert (gen.prompt_ids[gen.prompt_mask == 0] == tok.pad_token_id).all()
    assert mask.sum(-1).tolist()[:5] == [2, 2, 2, 2, 2]  # <action>, EOS
    assert mask[5].sum() == 6 and bool(gen.truncated[5]) and not gen.truncated[:5].any()
    assert gen.response_ids.shape == (6, 6)
    assert (gen.response_ids[mask == 0] == tok.pad_token_id).all()
    assert (gen.logprobs[mask == 0] == 0).all() and (gen.logprobs[mask == 1] <= 0).all()
    assert (gen.logprobs[5] < -1).all()  # free row: about log(1/400); forced rows: about 0
    assert _masked_max_diff(gen.logprobs, logp, mask) < 1e-4
    assert (logp[mask == 0] == 0).all() and (ent[mask == 0] == 0).all()
    assert (ent[mask == 1] > 0).all()
    assert gen.texts[:5] == ["<action>"] * 5


def test_response_logprobs_is_differentiable_and_micro_batched(policy):
    model, tok = policy
    gen = generate(model, tok, _prompts(tok), max_new_tokens=4,
                   generator=torch.Generator().manual_seed(0))
    args = (gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask)
    full, none = response_logprobs(model, *args)
    micro, _ = response_logprobs(model, *args, micro_batch_size=2)
    assert none is None
    torch.testing.assert_close(micro, full, rtol=0, atol=1e-5)
    model.zero_grad()
    (full * gen.response_mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad()


def test_top_k_one_samples_greedy_but_records_untruncated_logprobs(policy):
    model, tok = policy
    prompts = _prompts(tok)
    greedy = generate(model, tok, prompts, max_new_tokens=4, do_sample=False)
    top1 = generate(model, tok, prompts, max_new_tokens=4, temperature=0.5, top_k=1,
                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1.response_ids, greedy.response_ids)
    assert (top1.logprobs[top1.response_mask == 1] < 0).all()  # not log(1) = 0 after top-k
    logp, _ = response_logprobs(model, top1.prompt_ids, top1.prompt_mask, top1.response_ids,
                                top1.response_mask, temperature=0.5)
    assert _masked_max_diff(top1.logprobs, logp, top1.response_mask) < 1e-4


def _slow_greedy(model, prompt: list[int], max_new_tokens: int, eos: int):
    ids, out, lps = list(prompt), [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            tok = int(logits.argmax())
            out.append(tok)
            lps.append(float(torch.log_softmax(logits.float(), -1)[tok]))
            ids.append(tok)
            if tok == eos:
                break
    return out, lps


def test_greedy_matches_slow_unpadded_loop(policy):
    model, tok = policy
    prompts = _prompts(tok)
    gen = generate(model, tok, prompts, max_new_tokens=5, do_sample=False, temperature=0.3)
    for row, prompt in enumerate(prompts):
        ids, lps = _slow_greedy(model, prompt, 5, tok.eos_token_id)
        n = int(gen.response_mask[row].sum())
        assert gen.response_ids[row, :n].tolist() == ids
        # greedy records log-probs at temperature 1 whatever `temperature` says
        torch.testing.assert_close(gen.logprobs[row, :n], torch.tensor(lps), rtol=0, atol=1e-4)


def test_string_prompts_equal_token_prompts(policy):
    model, tok = policy
    texts = ["Move: ", "You are playing Sokoban.\n#_OX\nMove: "]
    a = generate(model, tok, texts, max_new_tokens=3, do_sample=False)
    b = generate(model, tok, [tok(t)["input_ids"] for t in texts], max_new_tokens=3,
                 do_sample=False)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts


def test_stop_string_cuts_response_mask_and_text(policy):
    model, tok = policy
    prompt = tok("Move: ")["input_ids"]
    up = tok("up")["input_ids"]
    after = tok("\n#X")["input_ids"]
    a_open, a_close = tok.convert_tokens_to_ids(list(ACTION_TOKENS))
    chain = [prompt[-1], a_open, *up, a_close, *after]
    handle = _force_chain(model, chain)
    try:
        stop = generate(model, tok, [prompt, prompt], max_new_tokens=10,
                        stop_strings=["</action>"], generator=torch.Generator().manual_seed(0))
        # a stop string that ends inside the token completing it: the text is cut after it
        mid = generate(model, tok, [prompt], max_new_tokens=10, stop_strings=["p</act", "zzz"],
                       generator=torch.Generator().manual_seed(0))
        # a stop string spanning several tokens that are not special
        multi = generate(model, tok, [prompt], max_new_tokens=10,
                         stop_strings=["</action>\n#"], do_sample=False)
        none = generate(model, tok, [prompt], max_new_tokens=4, stop_strings=["never"],
                        generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    n_stop = 2 + len(up)
    assert stop.texts == ["<action>up</action>"] * 2
    assert stop.response_mask.sum(-1).tolist() == [n_stop, n_stop]
    assert stop.response_ids.shape[1] == n_stop
    assert stop.response_ids[0].tolist() == [a_open, *up, a_close]
    assert not stop.truncated.any()
    assert mid.texts == ["<action>up</act"] and int(mid.response_mask.sum()) == n_stop
    multi_ids = multi.response_ids[0, : int(multi.response_mask.sum())].tolist()
    assert multi.texts == ["<action>up</action>\n#"]
    assert tok.decode(multi_ids).startswith("<action>up</action>\n#")
    assert tok.decode(multi_ids[:-1]).find("</action>\n#") < 0  # the last token completed it
    assert none.truncated.tolist() == [True] and int(none.response_mask.sum()) == 4
    assert none.texts == ["<action>up</action>\n"[: len(none.texts[0])]]


def test_eos_ends_row_and_is_kept_in_mask(policy):
    model, tok = policy
    prompt = tok("Move: ")["input_ids"]
    a_open = tok.convert_tokens_to_ids("<action>")
    handle = _force_chain(model, [prompt[-1], a_open, tok.eos_token_id])
    try:
        gen = generate(model, tok, [prompt], max_new_tokens=5, do_sample=False)
    finally:
        handle.remove()
    assert gen.response_ids.tolist() == [[a_open, tok.eos_token_id]]
    assert gen.response_mask.tolist() == [[1, 1]]
    assert gen.texts == ["<action>"] and gen.truncated.tolist() == [False]


def test_sampling_is_deterministic_given_the_generator(policy):
    model, tok = policy
    prompts = _prompts(tok)

    def run(seed: int) -> Generation:
        return generate(model, tok, prompts, max_new_tokens=6, temperature=1.2, top_p=0.9,
                        top_k=50, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)
    torch.manual_seed(11)
    d = generate(model, tok, prompts, max_new_tokens=6)
    torch.manual_seed(11)
    e = generate(model, tok, prompts, max_new_tokens=6)
    assert torch.equal(d.response_ids, e.response_ids)


def test_batch_size_chunks_equal_one_batch_for_greedy(policy):
    model, tok = policy
    prompts = _prompts(tok)
    prompts[1], prompts[2] = prompts[1][:-1], prompts[2][:-1]  # these do not end with the key
    handle = _force_chain(model, [prompts[0][-1], tok.eos_token_id])  # short rows in a chunk
    try:
        one = generate(model, tok, prompts, max_new_tokens=5, do_sample=False)
        chunked = generate(model, tok, prompts, max_new_tokens=5, do_sample=False, batch_size=2)
    finally:
        handle.remove()
    assert one.response_mask.sum(-1).tolist() == [1, 5, 5, 1, 1]
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "truncated"):
        assert torch.equal(getattr(one, name), getattr(chunked, name)), name
    assert one.texts == chunked.texts
    torch.testing.assert_close(one.logprobs, chunked.logprobs, rtol=0, atol=1e-5)


def test_repeated_prompts_share_one_prefill_with_the_same_result(policy):
    model, tok = policy
    prompts = _prompts(tok)
    grouped = [p for p in prompts for _ in range(3)]
    a = generate(model, tok, prompts, max_new_tokens=4, do_sample=False)
    b = generate(model, tok, grouped, max_new_tokens=4, do_sample=False)
    assert torch.equal(b.response_ids[::3], a.response_ids)
    torch.testing.assert_close(b.logprobs[::3], a.logprobs, rtol=0, atol=1e-5)


def test_generate_restores_training_mode(policy):
    model, tok = policy
    model.train()
    try:
        generate(model, tok, _prompts(tok)[:1], max_new_tokens=2)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 2, "top_p": 0.0}, "top_p"),
    ({"max_new_tokens": 2, "top_k": -1}, "top_k"),
    ({"max_new_tokens": 2, "temperature": 0.0}, "temperature"),
    ({"max_new_tokens": 2, "stop_strings": "</action>"}, "stop_strings"),
    ({"max_new_tokens": 2, "batch_size": 0}, "batch_size"),
])
def test_invalid_arguments_name_the_argument(policy, kwargs, name):
    model, tok = policy
    with pytest.raises(ValueError, match=name):
        generate(model, tok, ["Move: "], **kwargs)


def test_invalid_prompts_are_rejected(policy):
    model, tok = policy
    for prompts in ("Move: ", [], [[1, 2], []], ["a", [1, 2]]):
        with pytest.raises(ValueError, match="prompts"):
            generate(model, tok, prompts, max_new_tokens=2)


def test_response_logprobs_rejects_right_padded_prompts(policy):
    model, _ = policy
    ids = torch.tensor([[5, 6, 1]])
    with pytest.raises(ValueError, match="prompt_mask"):
        response_logprobs(model, ids, torch.tensor([[1, 1, 0]]), ids, torch.ones_like(ids))

"""The refusal direction: activations against HF transformers, the direction and the layer choice on
planted data, projection and ablation by algebra, interventions by what they change."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

import fissure
from fissure.errors import UserError
from fissure.probes.direction import (MIN_PER_CLASS, ablate, ablated, added, attribute, auroc, difference_of_means,
                                      fit_direction, last_token_states, project, require_local)

torch.set_num_threads(2)
PROMPTS = ["the cat sat", "a dog ran in the park", "hello", "paris is the capital of france", "one two"]


@pytest.fixture(scope="module")
def llama(tiny_llama):
    path, hf_model, _ = tiny_llama
    return fissure.load(str(path)), hf_model


def test_last_token_states_equal_transformers_hidden_states(llama):
    """Batched with padding, each layer's residual stream at the last real token equals HF's
    ``output_hidden_states`` (whose last entry has the final norm applied)."""
    lm, hf = llama
    states = last_token_states(lm, PROMPTS, batch_size=3)
    n_layers = len(lm.model.blocks)
    assert states.shape == (n_layers, len(PROMPTS), hf.config.hidden_size)
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([lm.prompt_ids(prompt)])
        with torch.no_grad():
            ref = hf(ids, output_hidden_states=True).hidden_states
        for layer in range(n_layers - 1):
            torch.testing.assert_close(states[layer, i], ref[layer + 1][0, -1].float(), rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            normed = hf.model.norm(states[-1, i])
        torch.testing.assert_close(normed, ref[-1][0, -1].float(), rtol=1e-4, atol=1e-4)


def test_prompts_sharing_a_system_prompt_run_it_once_and_get_the_same_states(llama):
    """Chats with one long system prompt: the shared start goes through a KV cache once; every
    layer's state still equals HF's on each whole prompt."""
    from fissure.probes.direction import SHARED_PREFIX, common_prefix

    lm, hf = llama
    system = "you are the help desk of the library. the staff password is never given to anyone. " * 2
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": p}] for p in PROMPTS]
    ids = [lm.prompt_ids(c) for c in chats]
    assert common_prefix(ids) >= SHARED_PREFIX
    states = last_token_states(lm, chats, batch_size=8)
    for i, x in enumerate(ids):
        with torch.no_grad():
            ref = hf(torch.tensor([x]), output_hidden_states=True).hidden_states
        for layer in range(len(lm.model.blocks) - 1):
            torch.testing.assert_close(states[layer, i], ref[layer + 1][0, -1].float(), rtol=1e-4, atol=1e-4)
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2 and common_prefix([[1, 2], [3]]) == 0


def test_difference_of_means_is_the_hand_computed_one():
    g = torch.Generator().manual_seed(0)
    r, b = torch.randn(3, 7, 5, generator=g), torch.randn(3, 9, 5, generator=g)
    diff = difference_of_means(r, b)
    for layer in range(3):
        by_hand = [sum(r[layer, i, k].item() for i in range(7)) / 7 - sum(b[layer, i, k].item() for i in range(9)) / 9
                   for k in range(5)]
        assert diff[layer].tolist() == pytest.approx(by_hand, abs=1e-6)


def test_fit_finds_the_planted_layer_and_direction():
    """Gaussian states; the classes differ along a planted vector at layer 2 only."""
    g = torch.Generator().manual_seed(1)
    planted = torch.zeros(16)
    planted[3], planted[7] = 3.0, -4.0
    r, b = torch.randn(4, 40, 16, generator=g), torch.randn(4, 40, 16, generator=g)
    r[2] += planted
    d = fit_direction(r, b, seed=0)
    assert d.layer == 2 and d.separation[2] > 0.95 and max(d.separation[:2] + d.separation[3:]) < 0.8
    assert torch.dot(d.unit, planted / planted.norm()).item() > 0.9
    assert d.recognised(r[2]).float().mean() > 0.9 and d.recognised(b[2]).float().mean() < 0.1


def test_auroc_equals_scikit_learn():
    g = torch.Generator().manual_seed(2)
    pos, neg = (torch.randn(30, generator=g) + 0.7).tolist(), torch.randn(25, generator=g).tolist()
    pos[:3] = neg[:3]  # ties count half, as in sklearn
    assert auroc(pos, neg) == pytest.approx(roc_auc_score([1] * 30 + [0] * 25, pos + neg))


def test_projection_and_ablation_by_algebra():
    g = torch.Generator().manual_seed(3)
    x, u = torch.randn(6, 10, generator=g), torch.randn(10, generator=g)
    u = u / u.norm()
    assert torch.allclose(project(x, u), (x * u).sum(-1))
    gone = ablate(x, u)
    assert torch.allclose(project(gone, u), torch.zeros(6), atol=1e-6)
    assert torch.allclose(ablate(gone, u), gone, atol=1e-6)  # idempotent
    assert torch.allclose(x - gone, project(x, u)[:, None] * u, atol=1e-6)  # only the u-component went


def _block_io(lm, prompt):
    """Each block's input and output on ``prompt``."""
    seen = []
    hooks = [b.register_forward_hook(lambda _m, a, out: seen.append((a[0].clone(), out.clone())))
             for b in lm.model.blocks]
    with torch.no_grad():
        lm.model(torch.tensor([lm.prompt_ids(prompt)]))
    for h in hooks:
        h.remove()
    return seen


def test_ablation_removes_the_direction_everywhere_and_undoes_itself(llama):
    lm, _ = llama
    g = torch.Generator().manual_seed(4)
    u = torch.randn(lm.model.config.n_embd, generator=g)
    u = u / u.norm()
    before = lm.model(torch.tensor([lm.prompt_ids(PROMPTS[1])])).detach()
    with ablated(lm.model, u):
        io = _block_io(lm, PROMPTS[1])
        during = lm.model(torch.tensor([lm.prompt_ids(PROMPTS[1])])).detach()
    for x, _ in io:  # every layer reads a residual stream without u
        assert project(x, u).abs().max() < 1e-4
    assert not torch.allclose(before, during)
    torch.testing.assert_close(lm.model(torch.tensor([lm.prompt_ids(PROMPTS[1])])).detach(), before)


def test_adding_at_a_layer_changes_that_layers_output_by_the_vector_and_nothing_before(llama):
    lm, _ = llama
    vector = torch.randn(lm.model.config.n_embd, generator=torch.Generator().manual_seed(5))
    plain = _block_io(lm, PROMPTS[0])
    with added(lm.model, 0, vector, scale=2.0):
        steered = _block_io(lm, PROMPTS[0])
    # the hook sees the block's own output, so compare what the next block reads
    torch.testing.assert_close(steered[1][0], plain[0][1] + 2.0 * vector)
    torch.testing.assert_close(steered[0][0], plain[0][0])  # layer 0's input untouched


def test_too_few_prompts_and_a_backend_without_activations_are_clear_errors():
    r, b = torch.randn(2, 2 * MIN_PER_CLASS, 4), torch.randn(2, 3, 4)
    with pytest.raises(UserError, match=f"at least {2 * MIN_PER_CLASS} restricted and {2 * MIN_PER_CLASS} benign"):
        fit_direction(r, b)
    import fake_openai_server as fake

    from fissure.backends.http import HTTPLanguageModel

    with fake.FakeOpenAIServer() as server:
        http = HTTPLanguageModel(server.url, api_key_env="FISSURE_TEST_NO_KEY", timeout=5.0)
        with pytest.raises(UserError, match="does not expose activations.*not an HTTP server"):
            require_local(http)


def test_attribution_follows_the_recognised_share():
    out = attribute({"rot13": [False] * 9 + [True], "prefix": [True] * 8 + [False] * 2},
                    {"rot13": [True] * 10, "prefix": [True, False] * 5}, {"rot13": "MG", "prefix": "CO"})
    assert out["rot13"]["attributed"] == "MG" and out["prefix"]["attributed"] == "CO"
    assert out["rot13"]["recognised"]["n"] == 10 and out["rot13"]["recognised"]["estimate"] == pytest.approx(0.1)
    assert out["prefix"]["recognised_when_complied"]["n"] == 5 and out["prefix"]["complied"] == 5


def test_stopping_at_a_layer_gives_the_same_states_below_it(llama):
    """``layers=1`` runs only the first block (the rest never runs) and its states equal the full pass's,
    with and without a shared system prompt in a KV cache."""
    lm, _ = llama
    system = "you are the help desk of the library. the staff password is never given to anyone. " * 2
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": p}] for p in PROMPTS]
    for prompts in (PROMPTS, chats):
        full = last_token_states(lm, prompts, batch_size=4)
        calls = []
        hook = lm.model.blocks[1].register_forward_hook(lambda *a: calls.append(1))
        first = last_token_states(lm, prompts, batch_size=4, layers=1)
        hook.remove()
        assert first.shape[0] == 1 and not calls
        torch.testing.assert_close(first[0], full[0])
    with pytest.raises(UserError, match="layers must be from 1 to 2"):
        last_token_states(lm, PROMPTS, layers=0)

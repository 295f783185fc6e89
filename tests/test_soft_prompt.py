"""Soft prompts: the shared forward pass, the Backend that scores them, training, the artifact, projection."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from promptopt.backends._local import split_pairs  # noqa: E402
from promptopt.backends.base import GenRequest, LLRequest  # noqa: E402
from promptopt.errors import ConfigError  # noqa: E402
from promptopt.scoring.scorer import Job, score_jobs  # noqa: E402
from promptopt.soft_prompt import (SoftPromptBackend, SoftPromptConfig, continuation_logprobs,  # noqa: E402
                                   load_soft_prompt, nearest_tokens, project_to_text,
                                   save_soft_prompt, score_soft_prompt, train_soft_prompt)
from promptopt.task import Task  # noqa: E402
from promptopt.types import Example  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer randomly initialised Llama with the embedded model's tokenizer, as an HFBackend."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from promptopt.backends.hf import HFBackend
    from promptopt.backends.models import embedded_hf_dir
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_hf_dir())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return HFBackend(str(path), device="cpu", dtype="float32")


def _task(output: str = "choose") -> Task:
    words = ["good fun", "awful mess", "great joy", "bad day", "lovely film", "terrible plot", "nice", "dull"]
    examples = [Example(id=f"e{i}", input=w, target=("Yes" if i % 2 == 0 else "No"), label=1 - i % 2)
                for i, w in enumerate(words)]
    return Task(name="tiny", splits={"train": examples, "dev": examples[:4], "test": examples[4:]},
                template="{prompt}\nReview: {input}\nPositive?", output=output,
                options=(" No", " Yes") if output == "choose" else (), seed_prompts=("Is it positive?",),
                max_tokens=3)


def _direct_logprobs(hf, prefix_ids, ids, n_ctx):
    """Reference: one unpadded forward over [prefix tokens; ids] with plain input_ids."""
    full = torch.tensor([prefix_ids + ids])
    with torch.inference_mode():
        lp = torch.log_softmax(hf.model(input_ids=full).logits[0].float(), dim=-1)
    start = len(prefix_ids) + n_ctx
    return [float(lp[p - 1, full[0, p]]) for p in range(start, full.shape[1])]


def test_soft_prompt_equal_to_token_embeddings_scores_like_those_tokens(tiny):
    # A soft prompt that is exactly the embeddings of some tokens must give the log-probabilities of
    # those tokens typed in, for every row of a batch with mixed lengths (padding must not leak in).
    prefix = tiny.tokenizer("Rate this review")["input_ids"]
    soft = tiny.model.get_input_embeddings().weight[prefix].detach()
    pairs = split_pairs(tiny.tokenizer, [("Review: ok", " Yes"), ("Review: a much longer text here", " No way"),
                                         ("", " Hello")])
    with torch.inference_mode():
        got = continuation_logprobs(tiny.model, soft, pairs)
    for (ids, n_ctx), lp in zip(pairs, got):
        assert lp.tolist() == pytest.approx(_direct_logprobs(tiny, prefix, list(ids), n_ctx), abs=1e-4)


def test_forward_matches_peft_own_forward(tiny):
    from peft import PromptTuningConfig, get_peft_model

    with torch.random.fork_rng():
        torch.manual_seed(3)
        peft_model = get_peft_model(tiny.model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5,
                                                                   prompt_tuning_init="RANDOM"))
    soft = peft_model.prompt_encoder["default"].embedding.weight.detach()
    (ids, n_ctx), = split_pairs(tiny.tokenizer, [("Review: fine", " Yes")])
    with torch.inference_mode():
        logits = peft_model(input_ids=torch.tensor([ids])).logits[0]
        expected = torch.log_softmax(logits.float(), -1)[5 + n_ctx - 1:-1].gather(
            1, torch.tensor(ids[n_ctx:])[:, None]).squeeze(1)
        got = continuation_logprobs(tiny.model, soft, [(ids, n_ctx)])[0]
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-4)


def test_backend_loglikelihood_and_generate_keep_request_order(tiny):
    soft = torch.randn(4, 64) * 0.1
    backend = SoftPromptBackend(tiny.model, tiny.tokenizer, soft, "base")
    reqs = [LLRequest("Review: b", " No"), LLRequest("Review: a long one", " Yes"), LLRequest("x", "")]
    out = backend.loglikelihood(reqs)
    singles = [backend.loglikelihood([r])[0] for r in reqs]
    assert [o.logprob for o in out] == pytest.approx([s.logprob for s in singles], abs=1e-4)
    assert out[2].logprob == 0.0 and out[0].logprob < 0
    gens = backend.generate([GenRequest("Say", max_tokens=3), GenRequest("A longer prompt here", max_tokens=2)])
    assert [g.usage.completion_tokens <= m for g, m in zip(gens, (3, 2))] == [True, True]
    assert all(g.finish_reason in ("stop", "length") for g in gens)


def test_backend_rejects_a_soft_prompt_of_another_width(tiny):
    with pytest.raises(ConfigError, match="same architecture|one architecture"):
        SoftPromptBackend(tiny.model, tiny.tokenizer, torch.zeros(4, 32), "base")


def test_config_validation():
    with pytest.raises(ConfigError):
        SoftPromptConfig(init="text", init_text="")
    with pytest.raises(ConfigError):
        SoftPromptConfig(optimizer="sgd")
    with pytest.raises(ConfigError):
        SoftPromptConfig(num_virtual_tokens=0, init="random")


@pytest.mark.parametrize("optimizer,lr", [("adafactor", 0.3), ("adamw", 0.05)])
def test_training_lowers_the_train_loss(tiny, optimizer, lr):
    from promptopt.soft_prompt import _loss

    task = _task()
    cfg = SoftPromptConfig(num_virtual_tokens=4, init="labels", optimizer=optimizer, lr=lr, steps=10,
                           batch_size=8, eval_every=0)
    trained = train_soft_prompt(task, tiny, cfg)
    assert trained.embeddings.shape == (4, 64) and trained.trainable_parameters == 4 * 64
    # init="labels" repeats the options' token embeddings to fill the prompt (PEFT's TEXT init).
    label_ids = tiny.tokenizer("No Yes")["input_ids"]
    start = tiny.model.get_input_embeddings().weight[(label_ids * 4)[:4]].detach()
    with torch.no_grad():
        start_loss, rows = _loss(task, tiny.model, tiny.tokenizer, start, task.split("train"))
        end_loss, _ = _loss(task, tiny.model, tiny.tokenizer, trained.embeddings, task.split("train"))
    assert float(end_loss) < float(start_loss) - 1e-3
    assert rows == 16 and trained.model_calls == 10 * 8 * 2


def test_dev_checkpoint_selection_keeps_the_best_scored_prompt(tiny):
    task = _task()
    cfg = SoftPromptConfig(num_virtual_tokens=4, init="vocab", lr=0.3, steps=4, batch_size=8, eval_every=2)
    trained = train_soft_prompt(task, tiny, cfg)
    assert [p["step"] for p in trained.history] == [0, 2, 4]
    best = max(trained.history, key=lambda p: p["dev"])
    assert trained.best_step == best["step"]
    kept = SoftPromptBackend(tiny.model, tiny.tokenizer, trained.embeddings, tiny.fingerprint())
    assert score_soft_prompt(task, kept, "dev").score == pytest.approx(best["dev"])


def test_same_seed_same_soft_prompt(tiny):
    task = _task()
    cfg = SoftPromptConfig(num_virtual_tokens=3, init="vocab", steps=3, batch_size=4, eval_every=0, seed=7)
    a, b = train_soft_prompt(task, tiny, cfg), train_soft_prompt(task, tiny, cfg)
    c = train_soft_prompt(task, tiny, SoftPromptConfig(**{**cfg.__dict__, "seed": 8}))
    assert torch.equal(a.embeddings, b.embeddings)
    assert not torch.equal(a.embeddings, c.embeddings)


def test_generate_task_trains_on_the_reference_and_scores_by_generation(tiny):
    task = _task("generate")
    trained = train_soft_prompt(task, tiny, SoftPromptConfig(num_virtual_tokens=2, init="text",
                                                             init_text="Answer Yes or No", steps=2,
                                                             batch_size=4, eval_every=0))
    backend = SoftPromptBackend(tiny.model, tiny.tokenizer, trained.embeddings, tiny.fingerprint())
    ev = score_soft_prompt(task, backend, "dev")
    assert ev.state == "complete" and all(r.score in (0.0, 1.0) for r in ev.results)
    with pytest.raises(ConfigError, match="choose task"):
        train_soft_prompt(task, tiny, SoftPromptConfig(init="labels", steps=1))


def test_artifact_round_trip_scores_the_same(tiny, tmp_path):
    task = _task()
    trained = train_soft_prompt(task, tiny, SoftPromptConfig(num_virtual_tokens=3, init="random", steps=2,
                                                             batch_size=4, eval_every=0))
    save_soft_prompt(trained, tiny, tmp_path / "soft_prompt")
    assert (tmp_path / "soft_prompt" / "adapter_model.safetensors").is_file()
    loaded = load_soft_prompt(tmp_path / "soft_prompt", tiny)
    assert torch.allclose(loaded.embeddings, trained.embeddings)
    fresh = SoftPromptBackend(tiny.model, tiny.tokenizer, trained.embeddings, tiny.fingerprint())
    assert score_soft_prompt(task, loaded, "test").results == score_soft_prompt(task, fresh, "test").results
    other = SimpleNamespace(model=tiny.model, tokenizer=tiny.tokenizer, fingerprint=lambda: "hf:other-model")
    with pytest.raises(ConfigError, match="only on the model"):
        load_soft_prompt(tmp_path / "soft_prompt", other)


def test_nearest_tokens_cosine_and_l2():
    vocab = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    soft = torch.tensor([[0.9, 0.1], [3.0, 3.2]])
    assert nearest_tokens(soft, vocab, "cosine") == [0, 2]
    assert nearest_tokens(torch.tensor([[0.1, 0.9], [0.7, 0.6]]), vocab, "l2") == [1, 0]
    with pytest.raises(ConfigError):
        nearest_tokens(soft, vocab, "dot")


def test_projection_of_token_embeddings_reads_back_the_text(tiny):
    ids = tiny.tokenizer(" great movie")["input_ids"]
    soft = tiny.model.get_input_embeddings().weight[ids].detach()
    assert project_to_text(soft, tiny) == " great movie"


def test_soft_backend_runs_through_score_jobs_with_an_empty_prompt(tiny):
    task = _task()
    backend = SoftPromptBackend(tiny.model, tiny.tokenizer, torch.zeros(2, 64), "base")
    ev = score_jobs(task, backend, [Job("soft", "", "dev", tuple(task.split("dev")))])[0]
    assert ev.state == "complete"
    assert all(math.isfinite(lp) for r in ev.results for lp in r.option_logprobs)


@pytest.mark.model
def test_embedded_model_soft_prompt_trains_and_scores(hf_embedded):
    from promptopt.api import load_task

    task = load_task("demo")
    cfg = SoftPromptConfig(num_virtual_tokens=4, init="text", init_text=task.seed_prompts[0], steps=2,
                           batch_size=4, eval_every=0)
    trained = train_soft_prompt(task, hf_embedded, cfg)
    assert trained.trainable_parameters == 4 * 576
    init_ids = hf_embedded.tokenizer(task.seed_prompts[0])["input_ids"][:4]
    init = hf_embedded.model.get_input_embeddings().weight[init_ids].detach()
    assert not torch.allclose(trained.embeddings, init)  # the prompt moved; the model did not
    assert not any(p.requires_grad for p in hf_embedded.model.parameters())
    backend = SoftPromptBackend(hf_embedded.model, hf_embedded.tokenizer, trained.embeddings,
                                hf_embedded.fingerprint())
    ev = score_soft_prompt(task, backend, "dev", limit=6)
    assert ev.state == "complete" and len(ev.results) == 6
    assert all(-30 < lp < 0 for r in ev.results for lp in r.option_logprobs)

"""Soft prompts: PEFT's prompt-learning methods trained on a task, saved, and scored and generated through
the hf backend's `soft_prompt` option (one model seam), and their projection to text."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from promptopt.backends.base import GenRequest, LLRequest  # noqa: E402
from promptopt.backends.hf import HFBackend  # noqa: E402
from promptopt.errors import ConfigError  # noqa: E402
from promptopt.soft_prompt import (METHODS, SoftPromptConfig, _loss, continuation_logprobs,  # noqa: E402
                                   nearest_tokens, project_to_text, score_soft_prompt, train_soft_prompt)
from promptopt.task import Task  # noqa: E402
from promptopt.types import Example  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer randomly initialised Llama with the embedded model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from promptopt.backends.models import embedded_hf_dir

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_hf_dir())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return HFBackend(str(tiny_dir), device="cpu", dtype="float32", batch_size=3)


def _task(output: str = "choose") -> Task:
    words = ["good fun", "awful mess", "great joy", "bad day", "lovely film", "terrible plot", "nice", "dull"]
    examples = [Example(id=f"e{i}", input=w, target=("Yes" if i % 2 == 0 else "No"), label=1 - i % 2)
                for i, w in enumerate(words)]
    return Task(name="tiny", splits={"train": examples, "dev": examples[:4], "test": examples[4:]},
                template="{prompt}\nReview: {input}\nPositive?", output=output,
                options=(" No", " Yes") if output == "choose" else (), seed_prompts=("Is it positive?",),
                max_tokens=3)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One short training run per PEFT method, saved."""
    root = tmp_path_factory.mktemp("soft")
    return {m: train_soft_prompt(_task(), tiny, SoftPromptConfig(method=m, num_virtual_tokens=3, init="vocab",
                                                                 steps=4, batch_size=4, eval_every=2),
                                 root / m)
            for m in METHODS}


REQS = [LLRequest("Review: fine\nPositive?", " Yes"), LLRequest("Review: a much longer review here\nPositive?", " No"),
        LLRequest("Review: fine\nPositive?", " No Yes maybe"), LLRequest("x", "")]


@pytest.mark.parametrize("method", METHODS)
def test_backend_scores_a_soft_prompt_as_peft_own_forward_does(tiny, trained, method):
    # The hf backend runs the soft prompt as a cached prefix (its batched prefix-sharing path); PEFT runs
    # it inside its own forward. The log-probabilities must agree, request by request.
    from peft import PeftModel

    soft = tiny.with_soft_prompt(trained[method].path)
    got = soft.loglikelihood(REQS)
    peft_model = PeftModel.from_pretrained(tiny.model, str(trained[method].path))
    with torch.inference_mode():
        ref = continuation_logprobs(peft_model, tiny.pad_id, tiny.token_pairs(REQS[:3]))
    assert [r.logprob for r in got[:3]] == pytest.approx([float(x.sum()) for x in ref], abs=1e-4)
    assert got[3].logprob == 0.0
    assert soft.fingerprint().startswith(tiny.fingerprint() + ":soft=")
    assert soft.fingerprint() != tiny.fingerprint() and tiny.loglikelihood(REQS[:1])[0].logprob != got[0].logprob


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_generation_with_a_soft_prompt_matches_greedy_peft_decoding(tiny, trained, method):
    from peft import PeftModel

    soft = tiny.with_soft_prompt(trained[method].path)
    reqs = [GenRequest("Say", max_tokens=4), GenRequest("A longer prompt here", max_tokens=4)]
    got = soft.generate(reqs)
    peft_model = PeftModel.from_pretrained(tiny.model, str(trained[method].path))
    for req, res in zip(reqs, got):
        ids = tiny.tokenizer(req.prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():  # greedy, one token at a time through PEFT's forward
            for _ in range(4):
                logits = peft_model(input_ids=ids).logits[0, -1]
                ids = torch.cat([ids, logits.argmax()[None, None]], dim=1)
        n = len(tiny.tokenizer(req.prompt)["input_ids"])
        assert res.text == tiny.tokenizer.decode(ids[0, n:], skip_special_tokens=True)[:len(res.text)]
        assert res.usage.completion_tokens <= 4 and res.finish_reason in ("stop", "length")


def test_soft_prompt_option_loads_from_the_registry_and_refuses_another_model(tiny_dir, trained, tmp_path):
    from promptopt import registry

    path = trained["prompt_tuning"].path
    backend = registry.get("backends", "hf")(model=str(tiny_dir), device="cpu", dtype="float32",
                                             soft_prompt=str(path))
    assert backend.soft_tokens == 3 and backend.soft_prompt == str(path)
    meta = json.loads((path / "soft_prompt.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for f in path.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "soft_prompt.json").write_text(json.dumps({**meta, "base_fingerprint": "hf:another-model"}))
    with pytest.raises(ConfigError, match="works only on the model it was trained for"):
        HFBackend(str(tiny_dir), device="cpu", dtype="float32", soft_prompt=str(other))
    with pytest.raises(ConfigError, match="is not a saved soft prompt"):
        HFBackend(str(tiny_dir), device="cpu", dtype="float32", soft_prompt=str(tmp_path / "missing"))


def test_trained_artifact_records_how_it_was_made(trained):
    for method, t in trained.items():
        meta = json.loads((t.path / "soft_prompt.json").read_text())
        assert meta["method"] == method and meta["trainable_parameters"] == t.trainable_parameters > 0
        assert [p["step"] for p in meta["history"]] == [0, 2, 4] and meta["best_step"] == t.best_step
        assert not t.path.with_name(t.path.name + ".partial").exists()
    assert trained["prompt_tuning"].trainable_parameters == 3 * 64
    assert trained["prefix_tuning"].trainable_parameters == 3 * 2 * 2 * 32  # tokens x layers x (k, v) x kv width


def test_dev_checkpoint_selection_keeps_the_best_scored_prompt(tiny, trained):
    t = trained["p_tuning"]
    best = max(t.history, key=lambda p: p["dev"])
    assert t.best_step == best["step"]
    assert score_soft_prompt(_task(), tiny.with_soft_prompt(t.path), "dev").score == pytest.approx(best["dev"])


@pytest.mark.parametrize("optimizer,lr", [("adafactor", 0.3), ("adamw", 0.05)])
def test_training_lowers_the_train_loss(tiny, tmp_path, optimizer, lr):
    from peft import PeftModel

    task = _task()
    cfg = SoftPromptConfig(num_virtual_tokens=4, init="labels", optimizer=optimizer, lr=lr, steps=10,
                           batch_size=8, eval_every=0)
    first = train_soft_prompt(task, tiny, SoftPromptConfig(**{**cfg.__dict__, "steps": 1, "lr": 1e-9}),
                              tmp_path / "start")
    last = train_soft_prompt(task, tiny, cfg, tmp_path / "end")
    losses = []
    for t in (first, last):
        with torch.no_grad():
            loss, rows = _loss(task, PeftModel.from_pretrained(tiny.model, str(t.path)), tiny, task.split("train"))
        losses.append(float(loss))
    assert losses[1] < losses[0] - 1e-3
    assert rows == 16 and last.model_calls == 10 * 8 * 2


def test_same_seed_same_soft_prompt_and_rerun_replaces_its_own_artifact(tiny, tmp_path):
    task = _task()
    cfg = SoftPromptConfig(num_virtual_tokens=3, init="vocab", steps=2, batch_size=4, eval_every=0, seed=7)
    a = train_soft_prompt(task, tiny, cfg, tmp_path / "a")
    weights = (a.path / "adapter_model.safetensors").read_bytes()
    train_soft_prompt(task, tiny, cfg, tmp_path / "a")  # promptopt's own artifact: replaced
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == weights
    c = train_soft_prompt(task, tiny, SoftPromptConfig(**{**cfg.__dict__, "seed": 8}), tmp_path / "c")
    assert (c.path / "adapter_model.safetensors").read_bytes() != weights
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="left alone"):
        train_soft_prompt(task, tiny, cfg, tmp_path / "mine")


def test_generate_task_trains_on_the_reference_and_scores_by_generation(tiny, tmp_path):
    task = _task("generate")
    t = train_soft_prompt(task, tiny, SoftPromptConfig(num_virtual_tokens=2, init="text", init_text="Answer Yes or No",
                                                       steps=2, batch_size=4, eval_every=0), tmp_path / "g")
    ev = score_soft_prompt(task, tiny.with_soft_prompt(t.path), "dev")
    assert ev.state == "complete" and all(r.score in (0.0, 1.0) for r in ev.results)
    with pytest.raises(ConfigError, match="choose task"):
        train_soft_prompt(task, tiny, SoftPromptConfig(init="labels", steps=1), tmp_path / "x")
    with pytest.raises(ConfigError, match="choose task"):
        train_soft_prompt(task, tiny, SoftPromptConfig(method="cpt", steps=1), tmp_path / "y")


def test_config_validation_and_paper_defaults():
    with pytest.raises(ConfigError):
        SoftPromptConfig(init="text", init_text="")
    with pytest.raises(ConfigError):
        SoftPromptConfig(optimizer="sgd", init="vocab")
    with pytest.raises(ConfigError):
        SoftPromptConfig(num_virtual_tokens=0, init="random")
    with pytest.raises(ConfigError, match="method must be one of"):
        SoftPromptConfig(method="lora")
    assert (SoftPromptConfig(init="vocab").optimizer_name, SoftPromptConfig(init="vocab").learning_rate) == \
        ("adafactor", 0.3)
    assert SoftPromptConfig(method="prefix_tuning").learning_rate == 1e-2  # P-Tuning v2's range 5e-3..1e-2


def test_nearest_tokens_cosine_and_l2():
    vocab = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    soft = torch.tensor([[0.9, 0.1], [3.0, 3.2]])
    assert nearest_tokens(soft, vocab, "cosine") == [0, 2]
    assert nearest_tokens(torch.tensor([[0.1, 0.9], [0.7, 0.6]]), vocab, "l2") == [1, 0]
    with pytest.raises(ConfigError):
        nearest_tokens(soft, vocab, "dot")


def test_projection_of_a_text_initialized_prompt_reads_back_the_text(tiny, tmp_path):
    # One step at a vanishing learning rate leaves PEFT's TEXT init in place: the projection is that text.
    t = train_soft_prompt(_task(), tiny, SoftPromptConfig(num_virtual_tokens=2, init_text=" great movie", lr=1e-9,
                                                          steps=1, batch_size=2, eval_every=0), tmp_path / "p")
    assert project_to_text(tiny.with_soft_prompt(t.path)) == " great movie"


def test_prefix_tuning_has_no_projection(tiny, trained):
    assert project_to_text(tiny.with_soft_prompt(trained["prefix_tuning"].path)) is None


@pytest.mark.model
def test_embedded_model_soft_prompt_trains_and_scores(hf_embedded, tmp_path):
    from promptopt.api import load_task

    task = load_task("demo")
    cfg = SoftPromptConfig(num_virtual_tokens=4, init="text", init_text=task.seed_prompts[0], steps=2,
                           batch_size=4, eval_every=0)
    t = train_soft_prompt(task, hf_embedded, cfg, tmp_path / "soft")
    assert t.trainable_parameters == 4 * 576
    assert not any(p.requires_grad for p in hf_embedded.model.parameters())  # the prompt moved; the model did not
    soft = hf_embedded.with_soft_prompt(t.path)
    init = hf_embedded.model.get_input_embeddings().weight[
        hf_embedded.tokenizer(task.seed_prompts[0])["input_ids"][:4]].detach()
    assert not torch.allclose(soft.soft_embeddings, init)
    ev = score_soft_prompt(task, soft, "dev", limit=6)
    assert ev.state == "complete" and len(ev.results) == 6
    assert all(-30 < lp < 0 for r in ev.results for lp in r.option_logprobs)

"""The RLPrompt policy: a frozen causal LM with a small trainable MLP on its last hidden state,
emitting a fixed number of prompt tokens, plus its two training losses.

Only the adapter learns (research/algorithms-rl-pmpo.md §1.2): the backbone's last hidden state h
goes through Linear(d, hidden) -> ReLU -> Linear(hidden, d) and then through the backbone's own
frozen output embedding. The adapter starts near zero, so the first policy is close to uniform
over the vocabulary, not the LM's distribution. The policy's input is one constant token, so it
learns a single task-level prompt.

Because the backbone is frozen, the soft Q-learning target network is a copy of the adapter alone,
and policy and target logits are computed from the same backbone states.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from promptopt.errors import ConfigError

INIT_GAIN = 1e-4  # RLPrompt's adapter init: xavier-uniform with a tiny gain, biases -1e-4
INIT_BIAS = -1e-4


def load_backbone(name: str, device: str = "cpu") -> tuple[Any, Any]:
    """A frozen causal LM and its tokenizer: "embedded", a local HF directory, a .gguf path or a hub id."""
    from promptopt.backends.hf import load_causal_lm

    model, tokenizer, _ = load_causal_lm(name, torch.float32, device)
    model.requires_grad_(False)
    return model, tokenizer


def prompt_vocabulary(tokenizer: Any, n_rows: int, words: Sequence[str] | None = None) -> list[int]:
    """Token ids the policy may emit. Given `words`, each must be exactly one token; otherwise every
    token that decodes to visible text (no special tokens, byte fragments or bare whitespace)."""
    if words:
        ids = []
        for word in words:
            tokens = tokenizer.encode(word, add_special_tokens=False)
            if len(tokens) != 1:
                raise ConfigError(f"vocabulary entry {word!r} is {len(tokens)} tokens for the policy "
                                  f"model; each entry must be exactly one token")
            ids.append(tokens[0])
        return sorted(set(ids))
    special = set(tokenizer.all_special_ids)
    size = min(len(tokenizer), n_rows)
    texts = tokenizer.batch_decode([[i] for i in range(size)])
    return [i for i, text in enumerate(texts)
            if i not in special and text.strip() and "\ufffd" not in text and text.isprintable()]


class Adapter(nn.Module):
    """The trainable MLP between the backbone's last hidden state and its output embedding."""

    def __init__(self, width: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        for layer in (self.up, self.down):
            nn.init.xavier_uniform_(layer.weight, gain=INIT_GAIN, generator=generator)
            nn.init.constant_(layer.bias, INIT_BIAS)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(states)))


@dataclass
class PromptSample:
    """Sampled prompts: `actions` index the policy vocabulary; `states` are the backbone states
    each action was chosen from (position t predicts action t)."""

    actions: torch.Tensor  # [batch, length] long
    states: torch.Tensor  # [batch, length, width]


class PromptPolicy(nn.Module):
    """Frozen backbone + trainable adapter over a (possibly restricted) vocabulary."""

    def __init__(self, backbone: Any, tokenizer: Any, *, prompt_length: int, adapter_hidden: int,
                 generator: torch.Generator, vocabulary: Sequence[str] | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        head = backbone.get_output_embeddings()
        device = head.weight.device
        self.token_ids = torch.tensor(prompt_vocabulary(tokenizer, head.weight.shape[0], vocabulary),
                                      device=device)
        if len(self.token_ids) < 2:
            raise ConfigError("the policy vocabulary needs at least two tokens")
        # Only the rows of allowed tokens: a restricted vocabulary also makes every step cheaper.
        self.register_buffer("head_weight", head.weight.detach()[self.token_ids].clone())
        bias = getattr(head, "bias", None)
        self.register_buffer("head_bias", None if bias is None else bias.detach()[self.token_ids].clone())
        source = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.source_id = 0 if source is None else int(source)
        width = self.head_weight.shape[1]
        self.adapter = Adapter(width, adapter_hidden, generator).to(device)
        self.target = copy.deepcopy(self.adapter).requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    def logits(self, states: torch.Tensor, *, target: bool = False) -> torch.Tensor:
        adapter = self.target if target else self.adapter
        return F.linear(adapter(states), self.head_weight, self.head_bias)

    @torch.no_grad()
    def backbone_states(self, actions: torch.Tensor) -> torch.Tensor:
        """Last-layer states after [source] + actions: [batch, actions + 1, width]."""
        source = torch.full((actions.shape[0], 1), self.source_id, dtype=torch.long, device=self.device)
        ids = torch.cat([source, self.token_ids[actions]], dim=1)
        return self.backbone.base_model(input_ids=ids).last_hidden_state

    @torch.no_grad()
    def sample(self, n: int, top_k: int, generator: torch.Generator) -> PromptSample:
        """n prompts, each token drawn from the top-k of the policy (top_k <= 0: the full vocabulary)."""
        actions = torch.empty((n, 0), dtype=torch.long, device=self.device)
        for _ in range(self.prompt_length):
            logits = self.logits(self.backbone_states(actions)[:, -1])
            if 0 < top_k < logits.shape[-1]:
                kept, index = logits.topk(top_k, dim=-1)
                choice = torch.multinomial(kept.softmax(-1).cpu(), 1, generator=generator).to(self.device)
                step = index.gather(1, choice)
            else:
                step = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).to(self.device)
            actions = torch.cat([actions, step], dim=1)
        return PromptSample(actions, self.backbone_states(actions[:, :-1]))

    @torch.no_grad()
    def greedy(self) -> torch.Tensor:
        """The most likely prompt, token by token: [1, length]."""
        actions = torch.empty((1, 0), dtype=torch.long, device=self.device)
        for _ in range(self.prompt_length):
            step = self.logits(self.backbone_states(actions)[:, -1]).argmax(-1, keepdim=True)
            actions = torch.cat([actions, step], dim=1)
        return actions

    def text(self, actions: torch.Tensor) -> str:
        return self.tokenizer.decode(self.token_ids[actions].tolist(), skip_special_tokens=True)


def sql_loss(logits: torch.Tensor, target_logits: torch.Tensor, actions: torch.Tensor,
             rewards: torch.Tensor) -> torch.Tensor:
    """On-policy soft Q-learning with a sparse final reward (Guo et al. 2021), RLPrompt's
    "v2_v2r_v3_v3r" without the unused reversed terms: the mean of
      v2, single-step path consistency  A_t = V'(s_{t+1}) - V'(s_t),  A_T = r - V'(s_T), and
      v3, multi-step                    sum_{k>=t} A_k = r - V'(s_t),
    where logits are Q-values, A = Q(s, a) - logsumexp Q(s, .) and V' comes from the target network.
    Squared errors are summed over time and averaged over prompts."""
    advantage = logits.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    target_v = target_logits.logsumexp(-1)
    step_target = torch.cat([target_v[:, 1:] - target_v[:, :-1], (rewards - target_v[:, -1]).unsqueeze(1)], dim=1)
    single_step = (advantage - step_target).pow(2).sum(1).mean()
    to_go = advantage.flip(1).cumsum(1).flip(1)
    multi_step = (to_go - (rewards.unsqueeze(1) - target_v)).pow(2).sum(1).mean()
    return 0.5 * (single_step + multi_step)


def reinforce_loss(logits: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Policy gradient with a baseline: the advantages are rewards already centred across the step's
    prompts (z-scored), so this is a group-relative REINFORCE, not the paper's method."""
    log_probs = logits.log_softmax(-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1).sum(1)
    return -(advantages * log_probs).mean()


@dataclass(frozen=True)
class UpdateStats:
    loss: float
    entropy: float  # mean over the sampled positions, in nats: watches exploration collapse


class PolicyTrainer:
    """One policy, its Adam optimizer and the chosen algorithm ("sql" or "reinforce")."""

    def __init__(self, policy: PromptPolicy, *, algorithm: str, learning_rate: float, grad_clip: float,
                 target_update_rate: float):
        if algorithm not in ("sql", "reinforce"):
            raise ConfigError(f"unknown RL algorithm {algorithm!r}: use 'sql' or 'reinforce'")
        self.policy = policy
        self.algorithm = algorithm
        self.grad_clip = grad_clip
        self.target_update_rate = target_update_rate
        self.optimizer = torch.optim.Adam(policy.adapter.parameters(), lr=learning_rate)

    def update(self, sample: PromptSample, rewards: Sequence[float]) -> UpdateStats:
        """One gradient step on the sampled prompts with their (shaped) rewards."""
        rewards_t = torch.tensor(rewards, dtype=torch.float32, device=self.policy.device)
        logits = self.policy.logits(sample.states)
        if self.algorithm == "sql":
            self._polyak()
            with torch.no_grad():
                target_logits = self.policy.logits(sample.states, target=True)
            loss = sql_loss(logits, target_logits, sample.actions, rewards_t)
        else:
            loss = reinforce_loss(logits, sample.actions, rewards_t)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.adapter.parameters(), self.grad_clip)
        self.optimizer.step()
        return UpdateStats(float(loss.detach()), entropy(logits.detach()))

    @torch.no_grad()
    def _polyak(self) -> None:
        rate = self.target_update_rate
        for tgt, src in zip(self.policy.target.parameters(), self.policy.adapter.parameters()):
            tgt.mul_(1.0 - rate).add_(src, alpha=rate)


def seeded_generator(seed: int) -> torch.Generator:
    """A private CPU generator: strategies never touch torch's global RNG."""
    return torch.Generator().manual_seed(seed % (2**63))


def entropy(logits: torch.Tensor) -> float:
    """Mean entropy (nats) of the policy's token distributions."""
    log_p = logits.log_softmax(-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())

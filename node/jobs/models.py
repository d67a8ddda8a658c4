"""Built-in model families: the only architectures a worker builds from a config.

A submitter sends a config (validated in :mod:`poolai.node.jobs.spec`) and
safetensors weights; the module is constructed here, in PoolAI's own code, and
the weights are loaded with ``load_state_dict(strict=True)``. Parameter names
must match :func:`poolai.node.jobs.spec.weight_signature` exactly (a test checks).

This module imports torch, so only the worker process may import it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolai.node.jobs.spec import (
    Activation,
    InvalidJob,
    Loss,
    MLPConfig,
    ModelConfig,
    Optimizer,
    TrainSpec,
    TransformerConfig,
)

_ACTIVATIONS = {
    Activation.RELU: F.relu,
    Activation.GELU: F.gelu,
    Activation.TANH: torch.tanh,
    Activation.SILU: F.silu,
}


class MLP(nn.Module):
    """Linear layers with an activation between them (none after the last)."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        w = config.widths
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(w[:-1], w[1:], strict=True))
        self.act = _ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class Block(nn.Module):
    """A pre-LayerNorm transformer block: self-attention then a GELU feed-forward."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads, self.causal = config.n_heads, config.causal
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, config.d_ff)
        self.ff2 = nn.Linear(config.d_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        heads = (b, t, self.n_heads, d // self.n_heads)
        q, k, v = (z.reshape(heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class Transformer(nn.Module):
    """Token and learned position embeddings, ``n_layers`` blocks, a final norm and a vocab head."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised module of the config's family (use a seed for reproducible weights)."""
    if isinstance(config, MLPConfig):
        return MLP(config)
    return Transformer(config)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``; every key must match in name and shape (strict)."""
    model.load_state_dict(dict(state), strict=True)


def _check_tokens(config: ModelConfig, inputs: Mapping[str, torch.Tensor]) -> None:
    if isinstance(config, TransformerConfig):
        tokens = inputs["tokens"]
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= config.vocab_size):
            raise InvalidJob(f"tokens must lie in [0, {config.vocab_size})")


def forward(model: nn.Module, config: ModelConfig, inputs: Mapping[str, torch.Tensor]
            ) -> dict[str, torch.Tensor]:
    """Run inference; returns the named outputs (``y`` for an MLP, ``logits`` for a transformer)."""
    _check_tokens(config, inputs)
    model.eval()
    with torch.inference_mode():
        if isinstance(config, MLPConfig):
            return {"y": model(inputs["x"])}
        return {"logits": model(inputs["tokens"])}


def _loss(model: nn.Module, config: ModelConfig, train: TrainSpec,
          inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(config, TransformerConfig):
        tokens = inputs["tokens"]
        logits = model(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    y = model(inputs["x"])
    if train.loss is Loss.CROSS_ENTROPY:
        return F.cross_entropy(y, inputs["target"])
    return F.mse_loss(y, inputs["target"])


def train_steps(model: nn.Module, config: ModelConfig, train: TrainSpec,
                inputs: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Full-batch training for ``train.steps`` steps; returns the new weights and each step's loss.

    The loss of step i is measured before that step's update, so ``losses[0]`` is the
    loss of the submitted weights.
    """
    _check_tokens(config, inputs)
    if isinstance(config, MLPConfig) and train.loss is Loss.CROSS_ENTROPY:
        target = inputs["target"]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= config.out_features):
            raise InvalidJob(f"class targets must lie in [0, {config.out_features})")
    torch.manual_seed(train.seed)
    model.train()
    params = list(model.parameters())
    opt: torch.optim.Optimizer = (torch.optim.Adam(params, lr=train.lr)
                                  if train.optimizer is Optimizer.ADAM
                                  else torch.optim.SGD(params, lr=train.lr))
    losses: list[float] = []
    for _ in range(train.steps):
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, config, train, inputs)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return state, losses

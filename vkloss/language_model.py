"""The main job's language model: predict each character of Python's own text from the eight before it.

The text is the Zen of Python and the source of the argparse module, both shipped with Python (nothing is
downloaded); its last tenth is held out. The model is Bengio et al.'s neural language model, as Karpathy's makemore
builds it: the context's characters looked up in an embedding, joined, one tanh layer, then the vocabulary's logits
and the loss in one op, g.linear_cross_entropy (the logits never held at once). With `bfloat16`, that layer's
operands (the hidden state and the output weight) are bfloat16, as a large model's would be; the loss and its
gradient are computed in float32. The same model trains in PyTorch float64 on the CPU from the same initial weights
on the same batches, for the summary beside it.
"""
from __future__ import annotations

import contextlib
import inspect
import io

import numpy as np

CONTEXT = 8  # characters the model sees before the one it predicts
EMBED = 16  # features per character
HIDDEN = 128


def text() -> str:
    """The Zen of Python (which `this` ships rot13-encoded) and the argparse module's source."""
    import argparse

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    return "".join(this.d.get(c, c) for c in this.s) + "\n" + inspect.getsource(argparse)


def windows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every CONTEXT characters [n, CONTEXT] and the character after them [n]."""
    starts = np.arange(len(ids) - CONTEXT)
    return ids[starts[:, None] + np.arange(CONTEXT)], ids[starts + CONTEXT]


def load():
    """(x_train, y_train, x_test, y_test, vocabulary): the text's first nine tenths for training, the rest held out."""
    characters = text()
    vocabulary = sorted(set(characters))
    ids = np.searchsorted(np.array(vocabulary), np.array(list(characters)))
    cut = int(0.9 * len(ids))
    return (*windows(ids[:cut]), *windows(ids[cut:]), vocabulary)


def initial_weights(vocabulary: int, rng) -> dict:
    """float32 arrays in PyTorch's layouts and default initializations (nn.Embedding: N(0, 1); nn.Linear: uniform in
    +-1/sqrt(fan_in)), shared by both runs."""
    def linear(fan_out, fan_in):
        bound = 1 / np.sqrt(fan_in)
        return (rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
                rng.uniform(-bound, bound, fan_out).astype(np.float32))

    (w1, b1), (w2, b2) = linear(HIDDEN, CONTEXT * EMBED), linear(vocabulary, HIDDEN)
    return {"embedding.weight": rng.standard_normal((vocabulary, EMBED)).astype(np.float32),
            "hidden.weight": w1, "hidden.bias": b1, "output.weight": w2, "output.bias": b2}


class Model:
    """The language model on a Graph: parameters named as a PyTorch state dict, its loss, its held-out perplexity."""

    def __init__(self, g, weights: dict, bfloat16: bool = False):
        self.g, self.bfloat16 = g, bfloat16
        self.named = {name: g.parameter(array) for name, array in weights.items()}
        self.params = list(self.named.values())

    def loss(self, x, y):
        g, p = self.g, self.named
        rows = x.shape[0]
        joined = g.reshape(g.embedding(p["embedding.weight"], x), shape=(rows, CONTEXT * EMBED))
        hidden = g.tanh(g.linear(joined, p["hidden.weight"], p["hidden.bias"]))
        weight = p["output.weight"]
        if self.bfloat16:
            hidden, weight = g.astype(hidden, dtype="bfloat16"), g.astype(weight, dtype="bfloat16")
        return g.linear_cross_entropy(hidden, weight, y, bias=p["output.bias"])

    def evaluate(self, data, rows: int = 4096) -> float:
        """Perplexity on the held-out text: exp of the mean loss over every position."""
        g, total, x_test, y_test = self.g, 0.0, data.x_test, data.y_test
        with g.no_grad():
            for begin in range(0, len(x_test), rows):
                x, y = x_test[begin:begin + rows], y_test[begin:begin + rows]
                total += self.loss(g.tensor(x, dtype=np.int32), g.tensor(y, dtype=np.int32)).item() * len(x)
        return float(np.exp(total / len(x_test)))


def train_torch(weights: dict, data, plan, lr: float, optimizer: str = "adam") -> tuple[list, float]:
    """The same model in PyTorch float64 on the CPU, from the same weights, on the same batches, with PyTorch's Adam
    (or SGD with momentum 0.9): the per-epoch mean training loss and the held-out perplexity."""
    import torch
    import torch.nn.functional as F

    params = {name: torch.tensor(array, dtype=torch.float64, requires_grad=True) for name, array in weights.items()}
    opt = (torch.optim.Adam(params.values(), lr=lr) if optimizer == "adam" else
           torch.optim.SGD(params.values(), lr=lr, momentum=0.9))

    def loss_of(x, y):
        joined = F.embedding(torch.from_numpy(x), params["embedding.weight"]).reshape(len(x), CONTEXT * EMBED)
        hidden = torch.tanh(F.linear(joined, params["hidden.weight"], params["hidden.bias"]))
        logits = F.linear(hidden, params["output.weight"], params["output.bias"])
        return F.cross_entropy(logits, torch.from_numpy(y))

    losses = []
    for epoch_batches in plan:
        total = 0.0
        for idx in epoch_batches:
            opt.zero_grad()
            loss = loss_of(data.x_train[idx], data.y_train[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / sum(len(idx) for idx in epoch_batches))
    with torch.no_grad():
        perplexity = float(torch.exp(loss_of(data.x_test, data.y_test)))
    return losses, perplexity

"""A language model's output layer with g.linear_cross_entropy: predict each word of Python's own source from the
word before it. The word vectors are fixed random features; the layer (weight [vocabulary, features] and bias) is
trained. Then the peak device memory of one step, linear_cross_entropy against matmul then cross_entropy_loss, at
a batch where the logits are larger than linear_cross_entropy's workspace."""
import argparse
import contextlib
import inspect
import io
import re

import numpy as np
import vkloss

with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen of Python
    import this
zen = "".join(this.d.get(c, c) for c in this.s)  # it ships rot13-encoded
text = zen + "".join(inspect.getsource(module) for module in (argparse, inspect))
words = re.findall(r"[A-Za-z_]+", text)
vocabulary = {w: i for i, w in enumerate(sorted(set(words)))}
ids = np.array([vocabulary[w] for w in words])
classes, features = len(vocabulary), 32
rng = np.random.default_rng(0)
embedding = rng.standard_normal((classes, features)).astype(np.float32)


def batch(size):
    at = rng.integers(1, len(ids), size)
    return embedding[ids[at - 1]], ids[at]  # the word before -> the word


g = vkloss.Graph()
weight, bias = g.parameter(np.zeros((classes, features))), g.parameter(np.zeros(classes))
opt = vkloss.optim.Adam([weight, bias], lr=0.05)
hidden, target = g.tensor(np.zeros((256, features))), g.tensor(np.zeros(256, np.int64), dtype=np.int32)
losses = []
for step in range(40):
    x, y = batch(256)
    hidden.copy_(x)
    target.copy_(y)
    opt.zero_grad()
    loss = g.linear_cross_entropy(hidden, weight, target, bias=bias)
    g.backward(loss)
    opt.step()
    losses.append(loss.item_async())
first, last = losses[0].result(), np.mean([c.result() for c in losses[-10:]])
print(f"{len(words):,} words, vocabulary {classes:,}: loss {first:.3f} -> {last:.3f} (uniform guess "
      f"{np.log(classes):.3f}) on {g.device.name}")
g.close()


def peak_bytes(fused: bool, rows: int) -> int:
    with vkloss.Graph() as g:
        x, y = batch(rows)
        w = (rng.standard_normal((classes, features)) * 0.1).astype(np.float32)
        h, w = g.parameter(x), g.parameter(w if fused else w.T.copy())  # nn.Linear's layout, or [features, classes]
        g.flush()
        if fused:
            loss = g.linear_cross_entropy(h, w, y)
        else:
            loss = g.cross_entropy_loss(g.matmul(h, w), y)
        g.backward(loss)
        loss.item()
        return g.stats["peak_device_bytes"]


rows = 4096
logits_mib = rows * classes * 4 / 2 ** 20
fused, unfused = peak_bytes(True, rows) / 2 ** 20, peak_bytes(False, rows) / 2 ** 20
print(f"peak device memory for one step at {rows} x {classes:,} (logits {logits_mib:.1f} MiB): "
      f"linear_cross_entropy {fused:.1f} MiB, matmul + cross_entropy_loss {unfused:.1f} MiB")

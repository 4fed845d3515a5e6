"""Train with a user-defined op: the Huber loss from huber.py, on a line with outliers."""
import numpy as np
import vkloss

import huber  # noqa: F401  (registers g.huber_loss)

rng = np.random.default_rng(0)
x = rng.uniform(-2, 2, (400, 1)).astype(np.float32)
y = (3.0 * x - 1.0 + 0.1 * rng.standard_normal((400, 1))).astype(np.float32)
y[rng.random(400) < 0.1] += 20.0  # outliers: Huber is quadratic near zero, linear in the tails

g = vkloss.Graph()
w, b = g.parameter(np.zeros((1, 1))), g.parameter(np.zeros(1))
opt = vkloss.optim.Adam([w, b], lr=0.05)
xs, ys = g.tensor(x), g.tensor(y)
for step in range(400):
    loss = g.huber_loss(g.add(g.matmul(xs, w), b), ys, delta=1.0)
    opt.zero_grad()
    g.backward(loss)
    opt.step()
print(f"Huber {loss.item():.4f}, slope {w.item():.2f} (true 3.0), intercept {b.item():.2f} (true -1.0)")

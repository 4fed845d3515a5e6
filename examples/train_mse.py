"""Regression with g.mse_loss: fit y = X w + b + noise, Adam. MSE is composed from primitives, so its gradient
comes from the tape."""
import numpy as np
import vkloss

rng = np.random.default_rng(0)
x = rng.standard_normal((400, 3)).astype(np.float32)
true_w = np.array([[1.5], [-2.0], [0.5]], np.float32)
y = (x @ true_w + 0.7 + 0.1 * rng.standard_normal((400, 1))).astype(np.float32)

g = vkloss.Graph()
w, b = g.parameter(np.zeros((3, 1))), g.parameter(np.zeros(1))
opt = vkloss.optim.Adam([w, b], lr=0.05)
xs, ys = g.tensor(x), g.tensor(y)
for step in range(300):
    loss = g.mse_loss(g.add(g.matmul(xs, w), b), ys)
    opt.zero_grad()
    g.backward(loss)
    opt.step()
print(f"MSE {loss.item():.4f}, w {w.numpy().ravel().round(2)}, b {b.numpy().round(2)} on {g.device.name}")

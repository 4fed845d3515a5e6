"""Binary classification with g.sigmoid and g.bce_loss: two Gaussian blobs, logistic regression, SGD."""
import numpy as np
import vkloss

rng = np.random.default_rng(0)
labels = rng.integers(0, 2, (500, 1)).astype(np.float32)
x = (rng.standard_normal((500, 2)) + 2.0 * (2 * labels - 1)).astype(np.float32)

g = vkloss.Graph()
w, b = g.parameter(np.zeros((2, 1))), g.parameter(np.zeros(1))
opt = vkloss.optim.SGD([w, b], lr=0.5, momentum=0.9)
xs, ys = g.tensor(x), g.tensor(labels)
for step in range(100):
    p = g.sigmoid(g.add(g.matmul(xs, w), b))  # probabilities in (0, 1)
    loss = g.bce_loss(p, ys)                  # fused kernel; values outside [0, 1] raise ValueError
    opt.zero_grad()
    g.backward(loss)
    opt.step()
accuracy = np.mean((p.numpy() > 0.5) == (labels > 0.5))
print(f"binary cross-entropy {loss.item():.4f}, accuracy {accuracy:.3f} on {g.device.name}")

"""Softmax classification with g.cross_entropy_loss: three Gaussian blobs, a linear model, Adam."""
import numpy as np
import vkloss

rng = np.random.default_rng(0)
centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
labels = rng.integers(0, 3, 600)
x = (centers[labels] + rng.standard_normal((600, 2))).astype(np.float32)
targets = np.eye(3, dtype=np.float32)[labels]  # one-hot (soft targets work too)

g = vkloss.Graph()                            # the default Vulkan device
w, b = g.parameter(np.zeros((2, 3))), g.parameter(np.zeros(3))
opt = vkloss.optim.Adam([w, b], lr=0.1)
xs, ys = g.tensor(x), g.tensor(targets)
for step in range(100):
    logits = g.add(g.matmul(xs, w), b)        # [600, 3]
    loss = g.cross_entropy_loss(logits, ys)   # fused kernel: loss and gradient in one pass
    opt.zero_grad()
    g.backward(loss)
    opt.step()                                # runs on the device, in place
accuracy = np.mean(g.add(g.matmul(xs, w), b).numpy().argmax(axis=1) == labels)
print(f"cross-entropy {loss.item():.4f}, accuracy {accuracy:.3f} on {g.device.name}")

"""What the main job (python -m vkloss.train) shows: a progress bar per task, the summary table, the language
model's loss curve and perplexity beside PyTorch float64's, and the PNG of the loss curves."""
from __future__ import annotations


def progress_bar(name: str, quiet: bool, epochs: int):
    """A tqdm bar over the epochs (rate, ETA; silent when stderr is not a terminal, or with --quiet)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs, desc=f"{name:14s}", unit="epoch", disable=True if quiet else None, leave=True)

    def show(done, total, loss):
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return show


def summary(results) -> str:
    head = (f"{'task':14s} {'loss':19s} {'final loss':>11s} {'float64':>11s} {'rel diff':>9s} {'metric':>10s} "
            f"{'vkloss':>8s} {'float64':>8s} {'time s':>7s} {'steps/s':>8s} {'subm/step':>9s}")
    lines = [head, "-" * len(head)]
    for task, vk, ref in results:
        rel = abs(vk.losses[-1] - ref.losses[-1]) / abs(ref.losses[-1])
        lines.append(f"{task.name:14s} {task.loss:19s} {vk.losses[-1]:11.6f} {ref.losses[-1]:11.6f} {rel:9.1e} "
                     f"{task.metric:>10s} {vk.metric:8.4f} {ref.metric:8.4f} {vk.seconds:7.2f} "
                     f"{vk.steps / vk.seconds:8.1f} {vk.submissions / vk.steps:9.2f}")
    return "\n".join(lines)


def describe_language_model(vk, ref, data, bfloat16: bool) -> None:
    """The language model's loss curve and held-out perplexity (train.Run vk and ref), beside PyTorch float64's."""
    print(f"lm: {data.classes} characters, {len(data.x_train):,} training and {len(data.x_test):,} held-out "
          f"positions" + ("; output layer in bfloat16" if bfloat16 else ""))
    print("lm training loss by epoch, vkloss | PyTorch float64: "
          + ", ".join(f"{a:.4f} | {b:.4f}" for a, b in zip(vk.losses, ref.losses)))
    print(f"lm held-out perplexity: vkloss {vk.metric:.4f}, PyTorch float64 {ref.metric:.4f} (a uniform guess: "
          f"{data.classes})" + ("; PyTorch is not installed (pip install vkloss[torch]): no float64 run"
                                if ref.metric != ref.metric else ""))


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2), squeeze=False)
    for ax, (task, vk, ref) in zip(axes[0], results):
        epochs = range(1, len(vk.losses) + 1)
        ax.plot(epochs, vk.losses, label="vkloss (float32, device)")
        ax.plot(epochs, ref.losses, "--", label="numpy (float64)")
        ax.set_title(f"{task.name}: {task.loss}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""python -m vkloss.train: train small networks on scikit-learn's bundled data sets with all four losses.

Tasks (data from the installed scikit-learn; nothing is downloaded):
  digits         1,797 8x8 images, 10 classes: MLP 64-64-10, g.cross_entropy_loss on one-hot targets
  breast_cancer  569 samples, binary: MLP 30-16-1, g.sigmoid then g.bce_loss
  diabetes_mse   442 samples, regression: MLP 10-16-1, g.mse_loss
  diabetes_l1    the same with g.l1_loss
  lm             a character-level language model of Python's own text (the Zen and argparse's source): embedding,
                 a tanh layer, then g.linear_cross_entropy over the vocabulary; perplexity on held-out text
Each task also trains the same model in float64 from the same initial weights on the same batches (the MLPs in numpy,
vkloss.reference; the language model in PyTorch on the CPU), and the summary puts both side by side.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import distributed, language_model, optim, reference
from .training_report import describe_language_model, plot, progress_bar, summary
from . import checkpoint as checkpoints
from .device import choose_device
from .errors import NoVulkanDeviceError
from .graph import Graph


@dataclass
class Task:
    name: str
    loss: str
    hidden: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    metric: str = "accuracy"
    steps_per_epoch: int | None = None  # where an epoch of all the data would take long: this many batches of it


TASKS = {
    "digits": Task("digits", "cross_entropy_loss", hidden=64, epochs=20, batch_size=64, lr=0.01),
    "breast_cancer": Task("breast_cancer", "bce_loss", hidden=16, epochs=20, batch_size=32, lr=0.01),
    "diabetes_mse": Task("diabetes_mse", "mse_loss", hidden=16, epochs=60, batch_size=32, lr=0.01, metric="rmse"),
    "diabetes_l1": Task("diabetes_l1", "l1_loss", hidden=16, epochs=60, batch_size=32, lr=0.01, metric="mae"),
    "lm": Task("lm", "linear_cross_entropy", hidden=language_model.HIDDEN, epochs=4, batch_size=256, lr=0.01,
               metric="perplexity", steps_per_epoch=40),
}
GROUPS = {"all": list(TASKS), "mlp": [name for name in TASKS if name != "lm"],
          "diabetes": ["diabetes_mse", "diabetes_l1"]}


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_scale: float = 1.0  # regression targets are standardized; errors are reported in the original units
    classes: int = 0  # the language model's vocabulary


def load(task: Task, seed: int) -> Data:
    if task.name == "lm":
        *splits, vocabulary = language_model.load()
        return Data(*splits, classes=len(vocabulary))
    from sklearn import datasets  # bundled with the package: load_* read local files

    if task.name == "digits":
        bunch = datasets.load_digits()
        x, labels = bunch.data / 16.0, bunch.target
        y = np.eye(10)[labels]
    elif task.name == "breast_cancer":
        bunch = datasets.load_breast_cancer()
        x, y = bunch.data, bunch.target[:, None].astype(np.float64)
    else:
        bunch = datasets.load_diabetes()
        x, y = bunch.data, bunch.target[:, None].astype(np.float64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    x_train, x_test = x[train], x[test]
    if task.name != "digits":  # standardize features by the training split
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-12
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test, y_scale = y[train], y[test], 1.0
    if task.metric != "accuracy":
        mean, y_scale = y_train.mean(), y_train.std()
        y_train, y_test = (y_train - mean) / y_scale, (y_test - mean) / y_scale
    return Data(x_train, y_train, x_test, y_test, y_scale)


def initial_weights(sizes, rng):
    """PyTorch's nn.Linear default: W and b uniform in +-1/sqrt(fan_in). float32 values, shared by both runs."""
    weights = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        bound = 1 / np.sqrt(fan_in)
        weights.append((rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32),
                        rng.uniform(-bound, bound, fan_out).astype(np.float32)))
    return weights


def batches(n: int, batch_size: int, epochs: int, rng, steps: int | None = None):
    """Shuffled batches per epoch, all of `batch_size` (the remainder of each shuffle is left out, as PyTorch's
    drop_last=True does; with `steps`, the first `steps` batches of each shuffle): every step has the same shapes,
    so after the first steps it reuses its kernels."""
    if not 0 < batch_size <= n:
        raise ValueError(f"batch size {batch_size} must be between 1 and the {n} training samples")
    whole = n // batch_size * batch_size
    return [np.split(rng.permutation(n)[:whole], whole // batch_size)[:steps] for _ in range(epochs)]


def metric(task: Task, output: np.ndarray, data: Data) -> float:
    if task.name == "digits":
        return float(np.mean(output.argmax(axis=1) == data.y_test.argmax(axis=1)))
    if task.name == "breast_cancer":
        return float(np.mean((output > 0) == (data.y_test > 0.5)))  # logit > 0 <=> sigmoid > 0.5
    error = (output - data.y_test) * data.y_scale
    return float(np.sqrt(np.mean(error ** 2))) if task.metric == "rmse" else float(np.mean(np.abs(error)))


class MLP:
    """An MLP task's model on a Graph: parameters named as a PyTorch state dict, its loss, its test metric."""

    def __init__(self, g, task: Task, weights):
        self.g, self.task = g, task
        self.params = [g.parameter(a.T if a.ndim == 2 else a) for layer in weights for a in layer]  # nn.Linear's
        self.named = {f"layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}": p for i, p in enumerate(self.params)}
        self.loss_fn = getattr(g, task.loss)

    def loss(self, x, y):
        out = network(self.g, self.params, x)
        return self.loss_fn(self.g.sigmoid(out), y) if self.task.loss == "bce_loss" else self.loss_fn(out, y)

    def evaluate(self, data: Data) -> float:
        with self.g.no_grad():
            return metric(self.task, network(self.g, self.params, self.g.tensor(data.x_test)).numpy(), data)


def make_model(g, task: Task, data: Data, rng, bfloat16: bool = False):
    """A task's initial weights (float32 arrays, shared with the float64 run) and its model on `g`."""
    if task.name == "lm":
        weights = language_model.initial_weights(data.classes, rng)
        return weights, language_model.Model(g, weights, bfloat16=bfloat16)
    weights = initial_weights([data.x_train.shape[1], task.hidden, data.y_train.shape[1]], rng)
    return weights, MLP(g, task, weights)


def network(g, params, x):
    """The MLP: linear layers (weights in nn.Linear's layout), relu between them; the output is logits (or the
    regression value). Each layer is one dispatch forward and one backward (g.linear)."""
    h = x
    for i in range(0, len(params), 2):
        h = g.linear(h, params[i], params[i + 1], activation="relu" if i + 2 < len(params) else "none")
    return h


# Steps after which a run has every buffer and kernel it needs: with each step's loss read a step later, the
# first steps' copies (the loss, and BCE's count of bad labels) hold their one-value buffers while the next steps
# allocate, so the size-1 buffers rotate through a few more before the pattern repeats (BCE: four steps).
WARMUP_STEPS = 5


@dataclass
class Run:
    losses: list = field(default_factory=list)  # per-epoch mean training loss
    metric: float = float("nan")
    seconds: float = 0.0
    steps: int = 0
    submissions: int = 0
    algorithms_after_warmup: int = 0
    algorithms_at_end: int = 0
    buffers_after_warmup: int = 0
    buffers_at_end: int = 0


def train_vkloss(g: Graph, task: Task, data: Data, model, plan, progress, eager: bool = False,
                 checkpoint: str | None = None, resume: bool = False, seed: int = 0, share: float | None = None) -> Run:
    """Train `model` over `plan` (batches of sample indices per epoch). share: under torchrun, this rank's part of
    each batch (plan holds that part), its gradients summed with the other ranks' by DataParallel, weighted by it:
    every rank then steps with the gradient of the whole batch. Checkpoints are written by rank 0."""
    params, named = model.params, model.named
    opt = optim.Adam(params, lr=task.lr) if task.optimizer == "adam" else optim.SGD(params, lr=task.lr, momentum=0.9)
    run = Run()
    identity = {"task": task.name, "seed": seed, "batch_size": task.batch_size, "lr": task.lr,
                "optimizer": task.optimizer, "epochs": len(plan)}
    if resume and checkpoint and os.path.exists(checkpoint):  # before the step is captured: it keeps what it recorded
        run.losses = _resumed_losses(checkpoint, named, opt, identity)
    dp = distributed.DataParallel(params) if share is not None else None  # rank 0's values on every rank
    start, submissions = time.perf_counter(), g.stats["submissions"]
    # refilled every step: the same buffers, the same compiled kernels (class indices as int32)
    x, y = (g.tensor(a[plan[0][0]], dtype=np.int32 if a.dtype.kind in "iu" else None)
            for a in (data.x_train, data.y_train))

    def step():
        opt.zero_grad()  # first, as in PyTorch: last step's gradients are not held through this forward
        loss = model.loss(x, y)
        g.backward(loss)
        if dp is not None:  # the host reads the gradients mid-step: such a step runs eagerly
            dp.all_reduce_gradients(share)
        opt.step()
        return loss

    # Captured, a step is recorded once and then replayed: no Python per op (vkloss/capture.py)
    train_step = step if eager or dp is not None else g.capture(step)

    def finish_epoch(copies):
        run.losses.append(_epoch_loss(copies, dp))
        progress(len(run.losses), len(plan), run.losses[-1])
        if checkpoint and (dp is None or dp.rank == 0):  # every epoch, atomically: a run stopped at any point
            checkpoints.save(checkpoint, named, optimizer=opt, metadata={**identity, "losses": run.losses})

    previous = None  # the last epoch's loss copies, summed once the next epoch has run: no wait between epochs
    for epoch_batches in plan[len(run.losses):]:
        losses = _epoch(g, run, data, epoch_batches, x, y, train_step)
        if previous is not None:
            finish_epoch(previous)
        previous = losses if not checkpoint else finish_epoch(losses)  # a checkpoint reads the epoch's losses now
    if previous is not None:
        finish_epoch(previous)
    run.seconds, run.submissions = time.perf_counter() - start, g.stats["submissions"] - submissions
    run.algorithms_at_end, run.buffers_at_end = g.stats["algorithms_created"], g.stats["buffers_created"]
    run.metric = model.evaluate(data)
    if train_step is not step:
        train_step.release()
    return run


def _epoch_loss(copies, dp) -> float:
    """The epoch's mean training loss from each step's (loss copy, batch part size); under torchrun, over every
    rank's parts."""
    total = np.array([sum(copy.result() * n for copy, n in copies), sum(n for _, n in copies)], np.float64)
    if dp is not None:
        total = distributed.all_reduce_sum(total)
    return float(total[0] / total[1])


def _epoch(g: Graph, run: Run, data: Data, batches, x, y, train_step) -> list:
    """One epoch's steps: (each step's loss copy, its batch size). Every step's loss reaches the host without a
    wait: the copy runs with the step, and the value is there by the time the step after next is submitted."""
    losses = []
    for idx in batches:
        x.copy_(data.x_train[idx])
        y.copy_(data.y_train[idx])
        losses.append((train_step().item_async(), len(idx)))
        run.steps += 1
        if run.steps == WARMUP_STEPS:
            run.algorithms_after_warmup, run.buffers_after_warmup = (g.stats["algorithms_created"],
                                                                     g.stats["buffers_created"])
    return losses


def _resumed_losses(checkpoint: str, named: dict, opt, identity: dict) -> list:
    """The per-epoch losses of the run saved in `checkpoint`, its parameters and optimizer state loaded; another
    run's file (task, seed, batch size, learning rate or optimizer not this run's) raises ValueError."""
    saved = checkpoints.load(checkpoint, named, optimizer=opt)
    if {k: saved.get(k) for k in identity if k != "epochs"} != {k: v for k, v in identity.items() if k != "epochs"}:
        raise ValueError(f"{checkpoint} is from another run ({saved}); this one is {identity}")
    return list(saved["losses"])


def train_reference(task: Task, data: Data, weights, plan) -> Run:
    if task.name == "lm":
        run = Run()
        try:
            run.losses, run.metric = language_model.train_torch(weights, data, plan, task.lr, task.optimizer)
        except ImportError:  # PyTorch is an extra (vkloss[torch]): without it, lm has no float64 run to show
            run.losses = [float("nan")] * len(plan)
        return run
    params = [a.astype(np.float64) for layer in weights for a in layer]
    opt = reference.Adam(params, task.lr) if task.optimizer == "adam" else reference.SGD(params, task.lr, 0.9)
    layers = lambda: list(zip(params[0::2], params[1::2]))  # noqa: E731
    run = Run()
    for epoch_batches in plan:
        total = 0.0
        for idx in epoch_batches:
            value, grads = reference.gradients(layers(), data.x_train[idx], data.y_train[idx], task.loss)
            opt.step([g for pair in grads for g in pair])
            total += value * len(idx)
        run.losses.append(total / sum(len(idx) for idx in epoch_batches))
    run.metric = metric(task, reference.forward(layers(), data.x_test)[1], data)
    return run


def _bounded(kind, low, inclusive: bool, what: str):
    """An argparse type: a number of `kind` above `low` (or at least it): bad values exit 2 with one line."""
    def convert(text):
        value = kind(text)  # argparse turns ValueError into "invalid <kind> value"
        if not (value >= low if inclusive else value > low) or value != value or value in (float("inf"),):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _png_path(text: str) -> str:
    """--plot's path, checked before training: its folder must exist and be writable."""
    if text:
        folder = os.path.dirname(os.path.abspath(text))
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"cannot write {text}: it is a directory; give a file name, such as "
                                             f"{os.path.join(text, 'vkloss-train.png')}")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text}: {folder} is not a writable folder")
    return text


def _checkpoint_path(text: str) -> str:
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"cannot write {text}: it is a directory; give a file name")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {folder} is not a writable folder")
    return text


def checkpoint_for(path: str | None, task: str, tasks: list) -> str | None:
    """The checkpoint file of `task`: `path` itself for one task, else path with the task's name before its suffix."""
    if not path or len(tasks) == 1:
        return path
    stem, suffix = os.path.splitext(path)
    return f"{stem}.{task}{suffix}"


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m vkloss.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="all", choices=[*GROUPS, *TASKS], help="which task(s) to train")
    parser.add_argument("--epochs", type=_bounded(int, 1, True, "at least 1"), help="epochs (default: per task)")
    parser.add_argument("--batch-size", type=_bounded(int, 1, True, "at least 1"),
                        help="batch size (default: per task)")
    parser.add_argument("--lr", type=_bounded(float, 0.0, False, "a positive number"),
                        help="learning rate (default: per task)")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], help="adam, or sgd with momentum 0.9 (default: adam)")
    parser.add_argument("--seed", type=_bounded(int, 0, True, "0 or more"), default=0)
    parser.add_argument("--device", type=_bounded(int, 0, True, "a device index (0 or more)"), default=None,
                        help="device index (default: VKLOSS_DEVICE, else the best); python -m vkloss.tools devices")
    parser.add_argument("--plot", default="vkloss-train.png", metavar="PATH", type=_png_path,
                        help="PNG of the loss curves (default: vkloss-train.png here); '' for none")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--checkpoint", metavar="PATH", type=_checkpoint_path,
                        help="save the parameters and the optimizer's state to PATH (safetensors) after every epoch, "
                             "atomically (with several tasks, one file each: PATH's name gets the task's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --checkpoint where it exists: bit-identical to a run never stopped")
    parser.add_argument("--lm-bfloat16", action="store_true",
                        help="lm: the output layer's operands (hidden state, weight) in bfloat16 for "
                             "g.linear_cross_entropy, which computes the loss and gradient in float32")
    parser.add_argument("--eager", action="store_true",
                        help="run each step op by op, instead of recording it once and replaying it (g.capture)")
    args = parser.parse_args(argv)
    if args.resume and not args.checkpoint:
        parser.error("--resume continues from --checkpoint PATH: give both")
    try:
        args.device_info = choose_device(args.device)
    except (NoVulkanDeviceError, ValueError, TypeError) as e:
        parser.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    names = GROUPS.get(args.task, [args.task])
    try:
        process = _join(args)
    except (ImportError, ValueError, RuntimeError) as e:
        print(f"python -m vkloss.train: error: {e}", file=sys.stderr)
        return 2
    first = process is None or process.rank == 0  # the one process that prints, plots and checkpoints
    results = []
    with Graph(args.device_info.index if process is None else process.device) as g:
        if first:
            print(f"device: {g.device}" + (f" (rank 0 of {process.world_size})" if process else ""))
        for name in names:
            try:
                results.append(_train_task(g, args, name, names, process))
            except ValueError as e:  # a batch size the data cannot fill, another run's checkpoint, a bad file
                print(f"python -m vkloss.train: error: {name}: {e}", file=sys.stderr)
                return 2
    if first:
        _report(args, results)
    if process is not None:
        distributed.shutdown()
    return 0


def _join(args):
    """Under torchrun: the process group joined and this rank's device (its --device or VKLOSS_DEVICE, else
    LOCAL_RANK among the devices). None for one process."""
    if not distributed.launched():
        return None
    process = distributed.init()
    if args.device is not None:
        process = dataclasses.replace(process, device=args.device)
    return process


def _train_task(g: Graph, args, name: str, names: list, process):
    given = lambda value, default: default if value is None else value  # noqa: E731  (0 is a value, not "unset")
    defaults = TASKS[name]
    task = dataclasses.replace(defaults, epochs=given(args.epochs, defaults.epochs),
                               batch_size=given(args.batch_size, defaults.batch_size), lr=given(args.lr, defaults.lr),
                               optimizer=given(args.optimizer, defaults.optimizer))
    data = load(task, args.seed)
    rng = np.random.default_rng(args.seed)
    weights, model = make_model(g, task, data, rng, args.lm_bfloat16)
    plan = batches(len(data.x_train), task.batch_size, task.epochs, rng, task.steps_per_epoch)
    first = process is None or process.rank == 0
    share, local = None, plan
    if process is not None:  # --batch-size stays the global batch: each rank takes its contiguous part of it
        local = [[np.array_split(idx, process.world_size)[process.rank] for idx in epoch] for epoch in plan]
        share = len(local[0][0]) / task.batch_size
        if not len(local[0][0]):
            raise ValueError(f"batch size {task.batch_size} leaves rank {process.rank} of {process.world_size} "
                             "no samples: give a batch of at least one sample per rank")
    vk = train_vkloss(g, task, data, model, local, progress_bar(name, args.quiet or not first, task.epochs),
                      args.eager, checkpoint_for(args.checkpoint, name, names), args.resume, args.seed, share)
    ref = train_reference(task, data, weights, plan) if first else None
    if name == "lm" and first:
        describe_language_model(vk, ref, data, args.lm_bfloat16)
    return task, vk, ref


def _report(args, results) -> None:
    print(summary(results))
    print("steps run op by op (--eager, or under torchrun)" if args.eager or distributed.launched() else
          "steps recorded once and replayed (g.capture; --eager runs them op by op)")
    for task, vk, _ in results:
        print(f"{task.name}: {vk.steps} steps; after the first {WARMUP_STEPS} steps, "
              f"{vk.algorithms_at_end - vk.algorithms_after_warmup}"
              f" kernels compiled and {vk.buffers_at_end - vk.buffers_after_warmup} buffers created")
    if args.plot:
        plot(results, args.plot)
        print(f"loss curves: {os.path.abspath(args.plot)}")


if __name__ == "__main__":
    raise SystemExit(main())

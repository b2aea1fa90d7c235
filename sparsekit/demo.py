"""``sparsekit demo``: train, prune gradually, convert and time a model on built-in data.

Everything runs offline on scikit-learn's bundled handwritten digits (1,797
8x8 images, 10 classes):

1. train a wide MLP (64 -> H -> H -> 10) densely;
2. prune it gradually with :class:`sparsekit.PolynomialDecay` while it
   keeps training (:class:`sparsekit.Pruner`), then fine-tune at the
   final sparsity;
3. :func:`sparsekit.make_permanent` and :func:`sparsekit.convert`
   (per layer, the faster of dense and a sparse format, by measurement);
4. measure batch-1 latency of the dense, the pruned-but-dense and the sparse
   model side by side (interleaved calls, median), and print a table of
   accuracy, stored parameters, bytes and latency.

Same seed, same training run on a given machine (bitwise the same weights; training
uses one intra-op thread so the core count does not change them). The latency
numbers are measurements and vary from run to run.

Example:
    >>> from sparsekit.demo import DemoConfig, run_demo
    >>> import io
    >>> tiny = DemoConfig(hidden=64, dense_epochs=1, prune_epochs=1, finetune_epochs=0,
    ...                   latency_repeats=5, train_limit=256)
    >>> result = run_demo(tiny, progress=False, out=io.StringIO())
    >>> result.max_abs_diff < 1e-4, result.sparse.stored_values <= result.dense.stored_values
    (True, True)
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Dict, Iterator, List, Optional, TextIO, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["DemoConfig", "DemoResult", "ModelStats", "FULL", "QUICK", "run_demo", "run_cli", "format_table"]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains and measures.

    ``sparsity`` applies to the hidden H x H layer and the output layer; the
    first layer (64 inputs per unit) keeps ``first_layer_sparsity``.
    ``train_limit`` caps the training samples (for tests); ``None`` uses all.
    ``threads``: threads of torch and sparsekit while converting and timing (both
    models alike; ``None`` keeps the defaults, torch's count). One thread is the
    default: batch 1 is bandwidth-bound, and a single thread per model is a
    comparison that other processes on the machine cannot distort much.
    """

    hidden: int = 2048
    dense_epochs: int = 6
    prune_epochs: int = 8
    finetune_epochs: int = 3
    sparsity: float = 0.95
    first_layer_sparsity: float = 0.5
    batch_size: int = 64
    lr: float = 1e-3
    finetune_lr: float = 1e-3
    mask_updates_per_epoch: int = 2
    latency_repeats: int = 300
    train_threads: int = 1
    threads: Optional[int] = 1
    seed: int = 0
    train_limit: Optional[int] = None


FULL = DemoConfig()
QUICK = DemoConfig(hidden=1024, dense_epochs=5, prune_epochs=5, finetune_epochs=2, latency_repeats=150)


@dataclass
class ModelStats:
    """Accuracy, storage and latency of one model."""

    name: str
    accuracy: float
    stored_values: int
    nbytes: int
    latency_us: float = float("nan")
    file_bytes: Optional[int] = None


@dataclass
class DemoResult:
    """Everything the demo measured (``format_table`` prints it)."""

    config: DemoConfig
    dense: ModelStats
    pruned: ModelStats
    sparse: ModelStats
    achieved_sparsity: float
    max_abs_diff: float
    conversion: str
    timings_s: Dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_test: int = 0
    threads: int = 1
    simd: str = ""
    fingerprint: str = ""
    sparse_layers: int = 0
    load_average: float = -1.0
    cpu_count: int = 0


# ----------------------------------------------------------------------------- helpers
@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads inside the block (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="step", file=sys.stderr,
                dynamic_ncols=True)


def digits_file() -> str:
    """Path of the handwritten-digits table that ships inside scikit-learn (found without importing it).

    Importing scikit-learn maps its own vendored OpenMP runtime next to torch's; the demo
    reads the bundled file directly so the process keeps a single OpenMP runtime.
    Raises ImportError when scikit-learn is not installed.
    """
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scikit-learn is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")


def load_digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``x`` (1797, 64) float pixel values 0..16 and ``y`` (1797,) labels 0..9."""
    path = digits_file()
    if os.path.exists(path):
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # the file moved: let scikit-learn find it

    x, y = load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def _split(y: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices: ``test_fraction`` of every class goes to the test set."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test.append(idx[: int(round(len(idx) * test_fraction))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test)] = True
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    rng.shuffle(train_idx)
    return train_idx, test_idx


def _data(cfg: DemoConfig) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits_arrays()
    x = (x / 16.0).astype(np.float32)
    train_idx, test_idx = _split(y, 0.25, cfg.seed)
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    return (torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]),
            torch.from_numpy(x[test_idx]), torch.from_numpy(y[test_idx]))


def build_mlp(hidden: int = 2048, inputs: int = 64, classes: int = 10) -> nn.Sequential:
    """The demo's model: ``Linear(inputs, hidden) - ReLU - Linear(hidden, hidden) - ReLU - Linear(hidden, classes)``.

    Example:
        >>> build_mlp(32)
        Sequential(
          (0): Linear(in_features=64, out_features=32, bias=True)
          (1): ReLU()
          (2): Linear(in_features=32, out_features=32, bias=True)
          (3): ReLU()
          (4): Linear(in_features=32, out_features=10, bias=True)
        )
    """
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return float((model(x).argmax(dim=1) == y).float().mean())


def _stored_values(model: nn.Module) -> int:
    """Floating-point values the model stores (weights, biases; sparse layers: kept values only)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() for t in tensors if t.is_floating_point())


def _nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (sparse layers: values, indices and row pointers)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _file_bytes(model: nn.Module, sparse: bool) -> int:
    """Size on disk: safetensors state_dict (dense) or :func:`sparsekit.save` (sparse)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        if sparse:
            import sparsekit

            sparsekit.save(model, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        return os.path.getsize(path)


def _count_sparse(model: nn.Module) -> int:
    from sparsekit.nn import SparseConv1d, SparseConv2d, SparseLinear

    return sum(isinstance(m, (SparseLinear, SparseConv1d, SparseConv2d)) for m in model.modules())


def _load_average() -> float:
    """1-minute load average (-1 where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return -1.0


def _fingerprint(model: nn.Module) -> str:
    """sha256 of the trained weights: equal seeds give equal fingerprints."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _epochs(model: nn.Module, opt: torch.optim.Optimizer, xtr: torch.Tensor, ytr: torch.Tensor, epochs: int,
            cfg: DemoConfig, gen: torch.Generator, bar, pruner=None) -> float:
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    loss = torch.zeros(())
    sparsity = f"{pruner.achieved_sparsity():.1%}" if pruner is not None else ""
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            batch_loss = loss_fn(model(xtr[idx]), ytr[idx])
            batch_loss.backward()
            loss = batch_loss.detach()
            opt.step()
            if pruner is not None and pruner.step():  # the masks changed: show the new sparsity
                sparsity = f"{pruner.achieved_sparsity():.1%}"
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", **({"sparsity": sparsity} if pruner else {}), refresh=False)
    return float(loss)


def _latencies(models: List[nn.Module], x: torch.Tensor, repeats: int, bar) -> List[float]:
    """Median batch-1 latency (microseconds) of each model over ``repeats`` interleaved rounds.

    Each round calls every model once on the same row (rows cycle through the first 64 of
    ``x``), and the model that goes first rotates from round to round.
    """
    from sparsekit.timing import interleaved

    rows = [x[i:i + 1].contiguous() for i in range(min(len(x), 64))]
    row_streams = [itertools.cycle(rows) for _ in models]  # model k's n-th call gets row n % 64
    calls = {k: (lambda m=m, it=it: m(next(it))) for k, (m, it) in enumerate(zip(models, row_streams))}
    times: Dict[int, List[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for m in models:  # warm-up: caches, thread pools, lazily built kernels
            for r in rows[:16]:
                m(r)
        done = 0
        while done < repeats:  # chunks of len(models) rounds keep the rotation going and feed the bar
            n = min(len(models), repeats - done)
            for k, samples in interleaved(calls, rounds=n, calls={k: 1 for k in calls}, each_call=True,
                                          rotate=True).items():
                times[k].extend(samples)
            done += n
            bar.update(n)
    return [statistics.median(times[k]) * 1e6 for k in calls]


def _prune_while_training(model: nn.Module, xtr: torch.Tensor, ytr: torch.Tensor, cfg: DemoConfig,
                          gen: torch.Generator, steps_per_epoch: int, progress: bool) -> None:
    """Gradual pruning on a PolynomialDecay schedule while training, fine-tuning, then make_permanent."""
    import sparsekit

    prune_steps = cfg.prune_epochs * steps_per_epoch
    frequency = max(1, steps_per_epoch // max(1, cfg.mask_updates_per_epoch))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.finetune_lr)
    # One PolynomialDecay ramp (0 -> 1, TensorFlow Model Optimization's formula) scaled per layer:
    # the H x H and output layers go to `sparsity`, the small first layer to `first_layer_sparsity`.
    end_step = frequency * max(1, (prune_steps - 1) // frequency)  # the last update lands on end_step
    ramp = sparsekit.PolynomialDecay(0.0, 1.0, begin_step=0, end_step=end_step, power=3, frequency=frequency)
    targets = {"0": cfg.first_layer_sparsity, "2": cfg.sparsity, "4": cfg.sparsity}

    def schedule(step: int) -> Tuple[bool, Dict[str, float]]:
        update, fraction = ramp(step)
        return update, {name: fraction * target for name, target in targets.items()}

    pruner = sparsekit.Pruner(model, schedule, optimizer=opt)  # masks gradients and Adam state too
    total_epochs = cfg.prune_epochs + cfg.finetune_epochs
    with _progress(total_epochs * steps_per_epoch, "2/4 prune + fine-tune", progress) as bar:
        _epochs(model, opt, xtr, ytr, total_epochs, cfg, gen, bar, pruner=pruner)
    sparsekit.make_permanent(model)  # masks -> plain zeros, no hooks left
    model.eval()


def _convert_and_time(dense: nn.Module, model: nn.Module, xte: torch.Tensor, yte: torch.Tensor, cfg: DemoConfig,
                      progress: bool, timings: Dict[str, float], say) -> tuple:
    """Stage 3 (convert, check) and stage 4 (side-by-side batch-1 latency)."""
    import sparsekit

    t0 = time.perf_counter()
    with _progress(1, "3/4 convert", progress) as bar:
        sparse = sparsekit.convert(model, format="auto", batch_sizes=(1,))
        bar.update(1)
    sparse_acc = _accuracy(sparse, xte, yte)
    with torch.inference_mode():
        max_diff = float((sparse(xte) - model(xte)).abs().max())
    summary = str(getattr(sparse, "sparsekit_summary", ""))
    timings["convert"] = time.perf_counter() - t0
    say(f"[3/4] converted with sparsekit.convert (format='auto': per layer, the faster of dense and sparse "
        f"on this CPU) ({timings['convert']:.1f} s):")
    for line in summary.splitlines():
        say("      " + line)
    say(f"      outputs equal the pruned dense model's: max |difference| {max_diff:.1e}")

    t0 = time.perf_counter()
    with _progress(cfg.latency_repeats, "4/4 latency", progress) as bar:
        lat = _latencies([dense, model, sparse], xte, cfg.latency_repeats, bar)
    timings["latency"] = time.perf_counter() - t0
    say(f"[4/4] timed batch-1 inference, {cfg.latency_repeats} interleaved calls per model "
        f"({timings['latency']:.1f} s)")
    return sparse, sparse_acc, max_diff, summary, lat


# ----------------------------------------------------------------------------- the demo
def run_demo(config: DemoConfig = FULL, progress: bool = True, out: Optional[TextIO] = None) -> DemoResult:
    """Run the demo with ``config``; print stage lines and the table to ``out`` (stdout); return the numbers."""
    import sparsekit

    out = sys.stdout if out is None else out
    cfg = config
    timings: Dict[str, float] = {}

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    torch.manual_seed(cfg.seed)  # weight initialisation; shuffling and the split have their own generators
    gen = torch.Generator().manual_seed(cfg.seed)
    xtr, ytr, xte, yte = _data(cfg)
    steps_per_epoch = -(-len(xtr) // cfg.batch_size)
    info = sparsekit.cpu_info()
    h = cfg.hidden
    say(f"sparsekit demo: MLP 64-{h}-{h}-10 on scikit-learn's digits ({len(xtr):,} training / {len(xte):,} test "
        f"images), seed {cfg.seed}; training on {cfg.train_threads} thread{'s' if cfg.train_threads != 1 else ''}, "
        f"timing on {cfg.threads or info['threads']} (SIMD {info['simd']})")

    # Training runs on `train_threads` (1) intra-op threads: the weights for a seed then do not depend
    # on the core count, and a busy machine does not stall a 2-thread team at every small op.
    # What is measured (conversion and latency) runs on `threads` (1 by default; --threads).
    # 1. dense training
    t0 = time.perf_counter()
    model = build_mlp(h)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    with _torch_threads(cfg.train_threads):
        with _progress(cfg.dense_epochs * steps_per_epoch, "1/4 train dense", progress) as bar:
            _epochs(model, opt, xtr, ytr, cfg.dense_epochs, cfg, gen, bar)
        dense = copy.deepcopy(model).eval()
        dense_acc = _accuracy(dense, xte, yte)
    timings["train"] = time.perf_counter() - t0
    say(f"[1/4] trained the dense model for {cfg.dense_epochs} epochs: test accuracy {dense_acc:.1%} "
        f"({timings['train']:.1f} s)")

    # 2. gradual pruning while training, then fine-tuning at the final sparsity
    t0 = time.perf_counter()
    with _torch_threads(cfg.train_threads):
        _prune_while_training(model, xtr, ytr, cfg, gen, steps_per_epoch, progress)
        pruned_acc = _accuracy(model, xte, yte)
    weights = [model[i].weight for i in (0, 2, 4)]
    achieved = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    timings["prune"] = time.perf_counter() - t0
    say(f"[2/4] pruned while training: PolynomialDecay 0 -> {cfg.sparsity:.0%} (first layer "
        f"{cfg.first_layer_sparsity:.0%}) over {cfg.prune_epochs} epochs, then {cfg.finetune_epochs} epochs of "
        f"fine-tuning: {achieved:.1%} of all weights are zero, test accuracy {pruned_acc:.1%} "
        f"({timings['prune']:.1f} s)")

    # 3. and 4. run on `threads` threads, torch and sparsekit alike (conversion measures with them too)
    all_threads = sparsekit.threads(cfg.threads, with_torch=True) if cfg.threads is not None \
        else nullcontext(sparsekit.get_num_threads())  # None: leave both defaults as they are
    with all_threads as threads:
        sparse, sparse_acc, max_diff, summary, lat = _convert_and_time(dense, model, xte, yte, cfg, progress,
                                                                       timings, say)

    stats = [
        ModelStats("dense", dense_acc, _stored_values(dense), _nbytes(dense), lat[0], _file_bytes(dense, False)),
        ModelStats("pruned, dense storage", pruned_acc, _stored_values(model), _nbytes(model), lat[1],
                   _file_bytes(model, False)),
        ModelStats("sparsekit", sparse_acc, _stored_values(sparse), _nbytes(sparse), lat[2],
                   _file_bytes(sparse, True)),
    ]
    result = DemoResult(cfg, stats[0], stats[1], stats[2], achieved, max_diff, summary, timings,
                        n_train=len(xtr), n_test=len(xte), threads=threads, simd=info["simd"],
                        fingerprint=_fingerprint(model), sparse_layers=_count_sparse(sparse),
                        load_average=_load_average(), cpu_count=os.cpu_count() or 0)
    say("")
    say(format_table(result))
    return result


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def format_table(result: DemoResult) -> str:
    """The demo's result table (dense vs pruned-dense vs sparsekit, with the sparse/dense ratio)."""
    d, p, s = result.dense, result.pruned, result.sparse
    rows: List[Tuple[str, str, str, str, str]] = [
        ("", "dense", "pruned (zeros kept)", "sparsekit", "sparsekit vs dense"),
        ("test accuracy", f"{d.accuracy:.2%}", f"{p.accuracy:.2%}", f"{s.accuracy:.2%}",
         f"{(s.accuracy - d.accuracy) * 100:+.2f} points"),
        ("stored parameters", f"{d.stored_values:,}", f"{p.stored_values:,}", f"{s.stored_values:,}",
         f"{d.stored_values / s.stored_values:.1f}x fewer"),
        ("bytes in memory", _mb(d.nbytes), _mb(p.nbytes), _mb(s.nbytes), f"{d.nbytes / s.nbytes:.1f}x smaller"),
    ]
    if d.file_bytes and s.file_bytes and p.file_bytes:
        rows.append(("bytes on disk", _mb(d.file_bytes), _mb(p.file_bytes), _mb(s.file_bytes),
                     f"{d.file_bytes / s.file_bytes:.1f}x smaller"))
    speed = d.latency_us / s.latency_us
    rows.append(("batch-1 latency (median)", f"{d.latency_us:.1f} us", f"{p.latency_us:.1f} us",
                 f"{s.latency_us:.1f} us", f"{speed:.2f}x " + ("faster" if speed >= 1 else "(slower)")))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"{result.achieved_sparsity:.1%} of the weights were pruned. 'pruned (zeros kept)' is what masking "
                 "toolkits give you: the zeros still cost memory and time.")
    load = (f"; 1-minute load average {result.load_average:.1f} on {result.cpu_count} cores, this run included"
            if result.load_average >= 0 else "")
    lines.append(f"Latencies: medians of {result.config.latency_repeats} interleaved calls per model in this run "
                 f"({result.threads} thread{'s' if result.threads != 1 else ''}, {result.simd}{load}).")
    if result.sparse_layers == 0:
        lines.append("No layer became sparse: format='auto' measured dense as faster on this machine just now.")
    if result.cpu_count and result.load_average > result.cpu_count + 1:  # this run itself adds about 1
        lines.append(f"The machine is busy (load average {result.load_average:.1f}, {result.cpu_count} cores): "
                     "timings are noisier than on an idle machine"
                     + ("; multi-threaded calls stall while other processes hold the cores." if result.threads > 1
                        else "."))
    return "\n".join(lines)


def run_cli(quick: bool = False, seed: int = 0, progress: bool = True, threads: Optional[int] = 1) -> int:
    """Entry point of ``sparsekit demo``: returns the exit status."""
    cfg = replace(QUICK if quick else FULL, seed=seed, threads=threads)
    progress = progress and sys.stderr.isatty()
    t0 = time.perf_counter()
    run_demo(cfg, progress=progress)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from sparsekit.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))

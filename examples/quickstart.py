"""Quick start: prune a model, convert it to sparse layers, check the outputs, time both."""
import sys, time, torch, sparsekit

h = int(sys.argv[1]) if len(sys.argv) > 1 else 2048  # hidden width (the test uses a small one)
model = torch.nn.Sequential(torch.nn.Linear(256, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
                            torch.nn.Linear(h, 10)).eval()
sparsekit.prune(model, 0.9)       # remove the 90% smallest weights of every Linear layer (in place)
sparsekit.make_permanent(model)   # bake the masks into zeros (fine-tune before this in real use)
fast = sparsekit.convert(model, batch_sizes=(1,))  # sparse layers where they beat dense at batch 1 (measured)
x = torch.randn(1, 256)
with torch.inference_mode():
    print(fast.sparsekit_summary, "\nmax |sparse - dense| =", (fast(x) - model(x)).abs().max().item())
    times = {m: [] for m in (model, fast)}
    for _ in range(200):          # interleaved calls, so both models see the same machine load
        for m in times:
            t = time.perf_counter(); m(x); times[m].append(time.perf_counter() - t)
dense_ms, sparse_ms = (sorted(t)[len(t) // 2] * 1e3 for t in times.values())
print(f"batch-1 latency (median): dense {dense_ms:.3f} ms, sparse {sparse_ms:.3f} ms, {dense_ms / sparse_ms:.1f}x")

"""The ``sparsekit`` command line: success and bad input for every subcommand."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from safetensors.torch import save_file

import sparsekit
from sparsekit.cli import main
from sparsekit.demo import build_mlp

HIDDEN = 32
FACTORY = ["--factory", "sparsekit.demo:build_mlp", "--factory-kwargs", json.dumps({"hidden": HIDDEN})]
SUBCOMMANDS = ["info", "demo", "prune", "convert", "bench"]


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``python -m sparsekit ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "sparsekit", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def assert_bench_error(err: str, *fragments: str) -> None:
    """A usage error of sparsekit.bench's own parser: one line, no usage dump, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("sparsekit bench: error:"), err
    for f in fragments:
        assert f in lines[-1], lines[-1]


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "error" in lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_mlp(HIDDEN).eval()


def jit(fn, *args):
    """Call a torch.jit function (deprecated since torch 2.10, still what TorchScript users have)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(*args)


@pytest.fixture
def script_file(tmp_path, mlp) -> str:
    path = str(tmp_path / "model.pt")
    jit(torch.jit.save, jit(torch.jit.script, mlp), path)
    return path


@pytest.fixture
def state_file(tmp_path, mlp) -> str:
    path = str(tmp_path / "model.safetensors")
    save_file(mlp.state_dict(), path)
    return path


def weight_sparsity(weights) -> list:
    return [round(float((w == 0).float().mean()), 4) for w in weights]


# ----------------------------------------------------------------------------- top level
def test_help_lists_every_subcommand_with_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in SUBCOMMANDS:
        assert cmd in out
    assert "examples:" in out and "exit status" in out


@pytest.mark.parametrize("cmd", [cmd for cmd in SUBCOMMANDS if cmd != "bench"])  # bench: its own parser
def test_subcommand_help_has_examples(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"sparsekit {cmd}" in out
    assert "examples:" in out and "exit status" in out
    assert "exit status" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sparsekit {sparsekit.__version__}"


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert_one_line_error(capsys.readouterr().err, "choose a command")


@pytest.mark.parametrize("argv", [["frobnicate"], ["--bogus"], ["info", "--bogus"], ["demo", "--bogus"],
                                  ["prune", "--bogus"], ["convert", "--bogus"]])
def test_unknown_command_or_option_is_one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err)


# ----------------------------------------------------------------------------- info
def test_info_prints_version_simd_openmp_threads_torch(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    info = sparsekit.cpu_info()
    assert sparsekit.__version__ in out
    assert torch.__version__ in out
    # The key column is as wide as the longest key, which is "OpenMP runtimes" when another
    # package (e.g. scikit-learn, imported by an earlier test) mapped a second runtime.
    assert re.search(rf"^SIMD in use +{info['simd']}\b", out, re.M), out
    assert ", ".join(info["simd_available"]) in out
    assert "OpenMP" in out and re.search(rf"^kernel threads +{info['threads']}$", out, re.M), out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sparsekit"] == sparsekit.__version__
    assert data["torch"] == torch.__version__
    assert data["simd"] in data["simd_available"]
    assert isinstance(data["openmp"], bool) and data["threads"] >= 1


def test_module_entry_point_and_one_line_usage_error_in_a_real_process():
    ok = run_cli("info")
    assert ok.returncode == 0, ok.stderr
    assert "SIMD in use" in ok.stdout
    bad = run_cli("info", "--no-such-option")
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "--no-such-option")
    assert bad.stdout == ""


# ----------------------------------------------------------------------------- demo (bad input; the run is in test_demo.py)
@pytest.mark.parametrize("argv", [["demo", "--seed", "-1"], ["demo", "--seed", "abc"], ["demo", "extra"]])
def test_demo_bad_arguments(argv, capsys):
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err)


# ----------------------------------------------------------------------------- prune
def test_prune_torchscript(script_file, tmp_path, capsys):
    out = str(tmp_path / "pruned.pt")
    assert main(["prune", script_file, "-o", out, "--sparsity", "0.75"]) == 0
    text = capsys.readouterr().out
    assert "total" in text and "75.00%" in text and "torchscript" in text
    pruned = jit(torch.jit.load, out)
    layers = dict(pruned.named_modules())
    assert weight_sparsity([layers[i].weight for i in ("0", "2", "4")]) == [0.75, 0.75, 0.75]
    # the pruned model still runs and only the pruned weights changed
    original = jit(torch.jit.load, script_file)
    w0, p0 = dict(original.named_modules())["0"].weight, layers["0"].weight
    assert torch.equal(p0[p0 != 0], w0[p0 != 0])
    assert pruned(torch.randn(3, 64)).shape == (3, 10)
    assert not any(p.requires_grad is False for p in pruned.parameters())  # still trainable after loading


def test_prune_torchscript_conv_by_channels(tmp_path, capsys):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, groups=2),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 4)).eval()
    src, out = str(tmp_path / "cnn.pt"), str(tmp_path / "cnn_pruned.pt")
    jit(torch.jit.save, jit(torch.jit.script, net), src)
    assert main(["prune", src, "-o", out, "--sparsity", "0.5", "--granularity", "channels"]) == 0
    assert "Conv2d" in capsys.readouterr().out
    layers = dict(jit(torch.jit.load, out).named_modules())
    for name in ("0", "2", "4"):
        w = layers[name].weight
        dead_rows = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
        assert int(dead_rows.sum()) == w.shape[0] // 2, name  # half of the output channels removed
    assert layers[""](torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_prune_safetensors_with_factory_and_block_granularity(state_file, tmp_path, capsys):
    out = str(tmp_path / "pruned.safetensors")
    rc = main(["prune", state_file, "-o", out, "--sparsity", "0.5", "--granularity", "4x1", *FACTORY])
    assert rc == 0
    text = capsys.readouterr().out
    assert "safetensors" in text and "granularity=4x1" in text
    model = build_mlp(HIDDEN)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(out))
    w = model[2].weight
    blocks = w.reshape(HIDDEN // 4, 4, HIDDEN).abs().amax(dim=1)  # 4x1 blocks: 4 rows, 1 column
    assert float((blocks == 0).float().mean()) == 0.5
    assert torch.equal((w == 0), (blocks == 0).repeat_interleave(4, dim=0))


@pytest.mark.parametrize("granularity,method", [("channels", "l2"), ("2:4", "magnitude"),
                                                ("unstructured", "random")])
def test_prune_granularities_and_methods(granularity, method, state_file, tmp_path, capsys):
    out = str(tmp_path / "pruned.safetensors")
    rc = main(["prune", state_file, "-o", out, "--sparsity", "0.5", "--granularity", granularity,
               "--method", method, *FACTORY])
    assert rc == 0, capsys.readouterr().err
    assert "50.00%" in capsys.readouterr().out


def test_prune_exclude_and_global_scope(script_file, tmp_path, capsys):
    out = str(tmp_path / "pruned.pt")
    rc = main(["prune", script_file, "-o", out, "--sparsity", "0.6", "--scope", "global", "--exclude", "4"])
    assert rc == 0
    layers = dict(jit(torch.jit.load, out).named_modules())
    assert weight_sparsity([layers["4"].weight]) == [0.0]
    w = [layers["0"].weight, layers["2"].weight]
    assert sum(int((x == 0).sum()) for x in w) == round(0.6 * sum(x.numel() for x in w))
    capsys.readouterr()


def test_prune_factory_from_the_current_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        def tiny(width=16):
            return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    save_file(model.state_dict(), "w.safetensors")
    assert main(["prune", "w.safetensors", "-o", "p.safetensors", "--sparsity", "0.5",
                 "--factory", "my_models:tiny"]) == 0
    assert os.path.exists(tmp_path / "p.safetensors")
    sys.modules.pop("my_models", None)
    capsys.readouterr()


def test_prune_missing_file_is_usage_error(tmp_path, capsys):
    rc = main(["prune", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "o.pt"), "--sparsity", "0.5"])
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, "no such file")


def test_prune_unloadable_model_is_one_line_exit_1(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a model" * 10)
    assert main(["prune", str(junk), "-o", str(tmp_path / "o.pt"), "--sparsity", "0.5"]) == 1
    assert_one_line_error(capsys.readouterr().err, "cannot load")
    # a zip archive that is not TorchScript (torch.save of a state_dict)
    pickled = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    assert main(["prune", str(pickled), "-o", str(tmp_path / "o.pt"), "--sparsity", "0.5"]) == 1
    assert_one_line_error(capsys.readouterr().err, "cannot load")


def test_prune_unloadable_model_in_a_real_process(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    res = run_cli("prune", str(junk), "-o", str(tmp_path / "o.safetensors"), "--sparsity", "0.5")
    assert res.returncode == 1
    assert_one_line_error(res.stderr, "cannot load")


def test_prune_safetensors_needs_a_factory(state_file, tmp_path, capsys):
    assert main(["prune", state_file, "-o", str(tmp_path / "o.safetensors"), "--sparsity", "0.5"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--factory")


@pytest.mark.parametrize("factory,code,fragment", [
    ("no_colon_here", 2, "package.module:function"),
    ("no_such_module_xyz:build", 1, "cannot import"),
    ("sparsekit.demo:no_such_function", 1, "no attribute"),
    ("sparsekit:__version__", 1, "not callable"),
])
def test_prune_bad_factory(factory, code, fragment, state_file, tmp_path, capsys):
    rc = main(["prune", state_file, "-o", str(tmp_path / "o.safetensors"), "--sparsity", "0.5",
               "--factory", factory])
    assert rc == code
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_prune_state_dict_that_does_not_fit_the_factory(state_file, tmp_path, capsys):
    rc = main(["prune", state_file, "-o", str(tmp_path / "o.safetensors"), "--sparsity", "0.5",
               "--factory", "sparsekit.demo:build_mlp", "--factory-kwargs", '{"hidden": 48}'])
    assert rc == 1
    assert_one_line_error(capsys.readouterr().err, "cannot load", "shape")


@pytest.mark.parametrize("extra,fragment", [
    (["--sparsity", "1.5"], "--sparsity"),
    (["--sparsity", "half"], "--sparsity"),
    ([], "--sparsity"),
    (["--sparsity", "0.5", "--granularity", "diagonal"], "granularity"),
    (["--sparsity", "0.5", "--method", "astrology"], "--method"),
    (["--sparsity", "0.5", "--factory-kwargs", "[1, 2]"], "JSON object"),
])
def test_prune_bad_options(extra, fragment, script_file, tmp_path, capsys):
    assert main(["prune", script_file, "-o", str(tmp_path / "o.pt"), *extra]) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_prune_output_problems_are_usage_errors(script_file, tmp_path, capsys):
    assert main(["prune", script_file, "-o", str(tmp_path / "missing_dir" / "o.pt"), "--sparsity", "0.5"]) == 2
    assert_one_line_error(capsys.readouterr().err, "does not exist")
    assert main(["prune", script_file, "-o", script_file, "--sparsity", "0.5"]) == 2
    assert_one_line_error(capsys.readouterr().err, "overwrite")


def test_prune_factory_with_torchscript_is_usage_error(script_file, tmp_path, capsys):
    assert main(["prune", script_file, "-o", str(tmp_path / "o.pt"), "--sparsity", "0.5", *FACTORY]) == 2
    assert_one_line_error(capsys.readouterr().err, "TorchScript")


# ----------------------------------------------------------------------------- convert
@pytest.fixture
def pruned_state_file(tmp_path, mlp) -> str:
    from sparsekit.prune import make_permanent, prune

    prune(mlp, 0.9)
    make_permanent(mlp)
    path = str(tmp_path / "pruned.safetensors")
    save_file(mlp.state_dict(), path)
    return path


@pytest.mark.parametrize("fmt,expected", [("csr", "csr"), ("4x1", "bsr4x1")])
def test_convert_explicit_format_round_trip(fmt, expected, pruned_state_file, tmp_path, mlp, capsys):
    from safetensors.torch import load_file

    from sparsekit.io import load

    out = str(tmp_path / "sparse.safetensors")
    assert main(["convert", pruned_state_file, "-o", out, "--format", fmt, *FACTORY]) == 0
    text = capsys.readouterr().out
    assert text.count(expected) >= 3, text  # one decision row per Linear layer
    assert "wrote" in text and "smaller" in text
    assert os.path.getsize(out) < os.path.getsize(pruned_state_file)
    dense = build_mlp(HIDDEN).eval()
    dense.load_state_dict(load_file(pruned_state_file))
    sparse = load(out, build_mlp(HIDDEN))
    x = torch.randn(5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), dense(x), rtol=1e-5, atol=1e-5)


def test_convert_auto_prints_a_decision_per_layer(pruned_state_file, tmp_path, capsys):
    out = str(tmp_path / "sparse.safetensors")
    assert main(["convert", pruned_state_file, "-o", out, "--batch-sizes", "1,4", *FACTORY]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.split()[:2] in (["0", "Linear"], ["2", "Linear"], ["4", "Linear"])]
    assert len(rows) == 3, text
    assert os.path.exists(out)


def test_convert_missing_file_is_usage_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "o"), *FACTORY]) == 2
    assert_one_line_error(capsys.readouterr().err, "no such file")


def test_convert_torchscript_is_usage_error(script_file, tmp_path, capsys):
    assert main(["convert", script_file, "-o", str(tmp_path / "o.safetensors")]) == 2
    assert_one_line_error(capsys.readouterr().err, "TorchScript", "--factory")


def test_convert_unloadable_model_is_exit_1(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    assert main(["convert", str(junk), "-o", str(tmp_path / "o.safetensors"), *FACTORY]) == 1
    assert_one_line_error(capsys.readouterr().err, "cannot")


@pytest.mark.parametrize("extra,fragment", [
    (["--format", "diagonal"], "--format"),
    (["--format", "0x4"], "--format"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--batch-sizes", "one"], "--batch-sizes"),
    ([], "--factory"),
])
def test_convert_bad_options(extra, fragment, pruned_state_file, tmp_path, capsys):
    argv = ["convert", pruned_state_file, "-o", str(tmp_path / "o.safetensors"), *extra]
    if extra:
        argv += FACTORY
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_convert_missing_output_option(pruned_state_file, capsys):
    assert main(["convert", pruned_state_file, *FACTORY]) == 2
    assert_one_line_error(capsys.readouterr().err, "-o")


# ----------------------------------------------------------------------------- bench
def test_bench_bad_options(capsys):
    assert main(["bench", "--bogus"]) == 2
    assert_bench_error(capsys.readouterr().err, "--bogus")
    assert main(["bench", "--quick", "--full"]) == 2
    assert_bench_error(capsys.readouterr().err, "not allowed with")
    assert main(["bench", "--out"]) == 2
    assert_bench_error(capsys.readouterr().err, "--out")
    assert main(["bench", "--formats", "diagonal", "--shapes", "8x8"]) == 2  # rejected by the report itself
    assert_one_line_error(capsys.readouterr().err, "diagonal")


def test_bench_help_is_the_reports_own(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: sparsekit bench" in out
    for option in ("--quick", "--full", "--out", "--shapes", "--budget"):
        assert option in out
    assert "examples:" in out


def test_bench_runs_a_tiny_grid(tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["bench", "--shapes", "64x64", "--batches", "1", "--sparsities", "0.9", "--formats", "csr",
               "--no-targets", "--no-rss", "--no-bandwidth", "--budget", "0.005", "--out", str(out)])
    assert rc == 0
    assert (out / "report.md").exists() and (out / "results.json").exists()
    assert "64x64" in (out / "report.md").read_text()
    capsys.readouterr()


def test_bench_forwards_its_arguments(tmp_path, monkeypatch, capsys):
    """`sparsekit bench ARGS` hands ARGS untouched to sparsekit.bench.main and returns its status."""
    import sparsekit.bench as bench

    seen = []
    monkeypatch.setattr(bench, "main", lambda argv=None, prog="": seen.append((list(argv), prog)) or 0)
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    assert main(["bench", "--full"]) == 0
    assert main(["bench"]) == 0
    assert main(["bench", "--no-such-option", "x"]) == 0  # not the command line's to judge
    assert seen == [(["--quick", "--out", str(tmp_path)], "sparsekit bench"), (["--full"], "sparsekit bench"),
                    ([], "sparsekit bench"), (["--no-such-option", "x"], "sparsekit bench")]
    monkeypatch.setattr(bench, "main", lambda argv=None, prog="": 3)
    assert main(["bench", "--quick"]) == 3



# ----------------------------------------------------------------------------- prune: calibration, distillation
@pytest.fixture
def inputs_file(tmp_path) -> str:
    path = str(tmp_path / "inputs.pt")
    torch.save(torch.randn(48, 64, generator=torch.Generator().manual_seed(1)), path)
    return path


def _load_mlp(path: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = build_mlp(HIDDEN)
    model.load_state_dict(load_file(path))
    return model


def test_prune_distill_from_tensor_inputs(state_file, inputs_file, tmp_path, mlp, capsys):
    out = str(tmp_path / "distilled.safetensors")
    rc = main(["prune", state_file, "-o", out, "--sparsity", "0.5", *FACTORY, "--distill", "6", "--data", inputs_file,
               "--lr", "1e-3", "--batch-size", "16"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "distilled 6 steps (gradual schedule) from a dense copy of the input on 3 batches" in text
    model = _load_mlp(out)
    assert weight_sparsity([model[i].weight for i in (0, 2, 4)]) == [0.5, 0.5, 0.5]
    kept = model[2].weight != 0
    assert not torch.equal(model[2].weight[kept], mlp[2].weight[kept])  # the kept weights were trained


def test_prune_wanda_with_calibration_file(state_file, inputs_file, tmp_path, mlp, capsys):
    out = str(tmp_path / "wanda.safetensors")
    rc = main(["prune", state_file, "-o", out, "--sparsity", "0.5", *FACTORY, "--method", "wanda",
               "--calibration", inputs_file])
    assert rc == 0, capsys.readouterr().err
    assert "method=wanda" in capsys.readouterr().out
    expected = sparsekit.prune(mlp, 0.5, method="wanda", calibration=list(torch.load(inputs_file).split(16)))
    model = _load_mlp(out)
    for name, keep in expected.items():
        assert torch.equal(model.get_parameter(name) != 0, keep), name


def test_prune_sparsegpt_one_shot_start_with_a_torchscript_teacher(state_file, script_file, inputs_file, tmp_path,
                                                                   capsys):
    out = str(tmp_path / "sgpt.safetensors")
    rc = main(["prune", state_file, "-o", out, "--sparsity", "0.5", "--granularity", "2:4", *FACTORY,
               "--method", "sparsegpt", "--distill", "3", "--one-shot", "--data", inputs_file,
               "--teacher", script_file])
    assert rc == 0, capsys.readouterr().err
    assert f"distilled 3 steps (one-shot start, masks fixed) from {script_file}" in capsys.readouterr().out
    w = _load_mlp(out)[2].weight
    assert bool(((w != 0).reshape(-1, 4).sum(1) <= 2).all())


def test_prune_distill_on_sentences_for_a_model_that_tokenizes(tmp_path, monkeypatch, capsys):
    (tmp_path / "text_models.py").write_text(textwrap.dedent("""
        import torch
        class Encoder(torch.nn.Module):
            # sentence-transformers style: tokenize(texts) -> features; forward(features) -> features
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(50, 16)
                self.layer = torch.nn.Linear(16, 16)
            def tokenize(self, texts):
                rows = [[len(w) % 50 for w in t.split()][:8] for t in texts]
                width = max(map(len, rows))
                ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
                return {"input_ids": ids, "attention_mask": mask}
            def forward(self, features):
                tok = torch.tanh(self.layer(self.emb(features["input_ids"])))
                return dict(features, token_embeddings=tok, sentence_embedding=tok.mean(1))
        def encoder():
            torch.manual_seed(0)
            return Encoder()
    """))
    (tmp_path / "sentences.txt").write_text("\n".join(f"Sentence number {i} has a few words in it." for i in range(20)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    import importlib

    sys.path.insert(0, str(tmp_path))
    try:
        save_file(importlib.import_module("text_models").encoder().state_dict(), "enc.safetensors")
    finally:
        sys.path.remove(str(tmp_path))
    args = ["prune", "enc.safetensors", "-o", "p.safetensors", "--sparsity", "0.5", "--factory", "text_models:encoder",
            "--data", "sentences.txt", "--batch-size", "8"]
    assert main([*args, "--distill", "4"]) == 0, capsys.readouterr().err
    assert "distilled 4 steps" in capsys.readouterr().out
    assert main([*args, "--method", "wanda"]) == 0, capsys.readouterr().err  # calibration on the sentences
    sys.modules.pop("text_models", None)
    capsys.readouterr()


def test_prune_text_data_for_a_model_without_tokenizer_is_usage_error(state_file, tmp_path, capsys):
    (tmp_path / "s.txt").write_text("A sentence of words.\n")
    rc = main(["prune", state_file, "-o", str(tmp_path / "o.safetensors"), "--sparsity", "0.5", *FACTORY,
               "--distill", "2", "--data", str(tmp_path / "s.txt")])
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, "cannot take text", ".pt")


@pytest.mark.parametrize("extra, fragment", [
    (["--distill", "2"], "--distill needs --data"),
    (["--method", "wanda"], "--calibration"),
    (["--calibration", "INPUTS"], "wanda or sparsegpt"),
    (["--teacher", "INPUTS"], "--distill STEPS only"),
    (["--one-shot"], "--distill STEPS only"),
    (["--distill", "2", "--data", "INPUTS", "--batch-size", "0"], "must be >= 1"),
    (["--distill", "2", "--data", "NOFILE"], "no such file"),
])
def test_prune_distill_option_errors(extra, fragment, state_file, inputs_file, tmp_path, capsys):
    extra = [inputs_file if a == "INPUTS" else str(tmp_path / "missing.pt") if a == "NOFILE" else a for a in extra]
    rc = main(["prune", state_file, "-o", str(tmp_path / "o.safetensors"), "--sparsity", "0.5", *FACTORY, *extra])
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


@pytest.mark.parametrize("method", ["sparsegpt", None])
def test_prune_torchscript_cannot_train_or_calibrate(method, script_file, inputs_file, tmp_path, capsys):
    extra = ["--method", method, "--calibration", inputs_file] if method else ["--distill", "2", "--data", inputs_file]
    rc = main(["prune", script_file, "-o", str(tmp_path / "o.pt"), "--sparsity", "0.5", *extra])
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, "TorchScript", "--factory")


def test_prune_data_file_that_holds_no_inputs(state_file, tmp_path, capsys):
    bad = str(tmp_path / "bad.pt")
    torch.save({"a": torch.zeros(3, 64), "b": torch.zeros(4, 64)}, bad)
    rc = main(["prune", state_file, "-o", str(tmp_path / "o.safetensors"), "--sparsity", "0.5", *FACTORY,
               "--distill", "2", "--data", bad])
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, "common first dimension")


def test_prune_distill_default_learning_rate_is_the_library_default():
    from sparsekit.cli import build_parser
    from sparsekit.distill import DEFAULT_LR

    args = build_parser().parse_args(["prune", "m.pt", "-o", "o.pt", "--sparsity", "0.5"])
    assert args.lr == DEFAULT_LR and args.distill == 0 and args.batch_size == 16

"""Help texts and usage conventions of the ``sparsekit`` command line: the epilogs under
each ``--help``, and :class:`OneLineParser`, whose usage errors are one line.

Example:
    >>> from sparsekit import cli_help
    >>> cli_help.PRUNE_EPILOG.splitlines()[0]
    'MODEL is either a TorchScript file (torch.jit.save) or a safetensors state_dict'
"""

import argparse

__all__ = ["OneLineParser", "EXIT_NOTE", "MAIN_EPILOG", "INFO_EPILOG", "DEMO_EPILOG", "MODEL_HELP", "PRUNE_EPILOG",
           "CONVERT_EPILOG"]



class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are a single line (no usage dump), exit status 2.

    Every ``sparsekit`` subcommand parser is one, ``sparsekit bench``'s included.

    Example:
        >>> from sparsekit.cli_help import OneLineParser
        >>> p = OneLineParser(prog="demo"); _ = p.add_argument("--n", type=int)
        >>> try:
        ...     p.parse_args(["--n", "x"])
        ... except SystemExit as e:
        ...     e.code
        2
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


EXIT_NOTE = "exit status: 0 success, 1 failure (e.g. a model that cannot be loaded), 2 usage error"

MAIN_EPILOG = """\
examples:
  sparsekit info                      # version, SIMD level, OpenMP, threads
  sparsekit demo                      # train, prune, convert and time an MLP (< 2 min)
  sparsekit prune model.pt -o pruned.pt --sparsity 0.9
  sparsekit convert weights.safetensors -o sparse.safetensors --factory mypkg.models:build
  sparsekit bench --quick --out bench-report

""" + EXIT_NOTE

INFO_EPILOG = """\
examples:
  sparsekit info
  sparsekit info --json
  SPARSEKIT_SIMD=avx2 sparsekit info     # force a SIMD level

""" + EXIT_NOTE

DEMO_EPILOG = """\
Trains an MLP on scikit-learn's bundled digits (no download), prunes it gradually
with PolynomialDecay while fine-tuning, makes the masks permanent, converts it to
sparsekit's sparse layers and prints accuracy, stored parameters, bytes and
batch-1 latency of the dense and the sparse model, measured side by side.

examples:
  sparsekit demo                 # full run, under 2 minutes on 2 cores
  sparsekit demo --quick         # smaller model and fewer epochs, under 30 s
  sparsekit demo --seed 3 --no-progress > demo.txt
  sparsekit demo --threads 2     # time both models on 2 threads instead of 1

""" + EXIT_NOTE

MODEL_HELP = """\
MODEL is either a TorchScript file (torch.jit.save) or a safetensors state_dict
(safetensors.torch.save_file(model.state_dict(), ...)) together with --factory
package.module:function, an importable function that builds the model with the
same architecture (the current directory is searched as well)."""

PRUNE_EPILOG = MODEL_HELP + """

The output has the same format as the input, with the pruned weights set to zero.

With --distill STEPS the model is pruned gradually (cubic schedule over the first
two thirds of the steps, then held) while it is trained to reproduce its teacher -
by default a dense copy of MODEL itself - on --data (sparsekit.distill.prune_and_distill).
--one-shot prunes once with --method first and then trains with those masks fixed.
--method wanda / sparsegpt run the model on calibration inputs (--calibration, else
the first 8 batches of --data). Training and calibration need the Python model
(safetensors + --factory), not TorchScript. --data is a .pt file (torch.save) of a
tensor or dict of tensors (cut into --batch-size rows) or a list of batches, or a text
file of sentences for a model that tokenizes (sentence-transformers).

examples:
  sparsekit prune model.pt -o pruned.pt --sparsity 0.9
  sparsekit prune weights.safetensors -o pruned.safetensors --sparsity 0.8 \\
      --factory mypkg.models:build_mlp --granularity 4x1
  sparsekit prune model.pt -o pruned.pt --sparsity 0.5 --granularity 2:4 --exclude 'classifier*'
  sparsekit prune weights.safetensors -o pruned.safetensors --sparsity 0.5 \\
      --factory mypkg.models:build_mlp --method wanda --calibration inputs.pt
  sparsekit prune weights.safetensors -o pruned.safetensors --sparsity 0.8 \\
      --factory mypkg.models:build_mlp --distill 2000 --data inputs.pt --lr 1e-4
  sparsekit prune encoder.safetensors -o pruned.safetensors --sparsity 0.7 \\
      --factory mypkg.models:sentence_encoder --method sparsegpt --distill 1000 --one-shot --data sentences.txt

""" + EXIT_NOTE

CONVERT_EPILOG = """\
MODEL is a safetensors state_dict and --factory package.module:function builds the
model it belongs to (TorchScript cannot be rewritten into sparse modules). Prune
first (sparsekit prune) so there are zeros to drop. The output is written with
sparsekit.save; read it back with sparsekit.load(path, factory()).

examples:
  sparsekit convert pruned.safetensors -o sparse.safetensors --factory mypkg.models:build_mlp
  sparsekit convert pruned.safetensors -o sparse.safetensors --factory mypkg.models:build_mlp --format 4x1
  sparsekit convert pruned.safetensors -o sparse.safetensors --factory mypkg.models:build_mlp --batch-sizes 1
  sparsekit convert pruned.safetensors -o sparse.safetensors --factory mypkg.models:build \\
      --factory-kwargs '{"hidden": 1024}'

""" + EXIT_NOTE

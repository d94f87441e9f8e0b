"""The ``onnx-explain`` command line: a thin, lazy shell over the library.

Each command lives in its own module and is imported only when it runs, so ``onnx-explain --help``
does not import torch or onnxruntime.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__

#: command name -> (module, function, one-line help shown by ``--help`` without importing the module)
COMMANDS = {
    "info": ("onnx_explain.cli.info", "info", "Describe a model: inputs, outputs, ops, conversion and parity."),
    "explain": ("onnx_explain.cli.explain", "explain", "Explain images, arrays or CSV rows; write attributions and heatmaps."),
    "explain-generation": ("onnx_explain.cli.explain_generation", "explain_generation", "Generate from prompts with a decoder or encoder-decoder export and attribute each generated token."),
    "evaluate": ("onnx_explain.cli.evaluate", "evaluate", "Score attributions with perturbation and robustness metrics."),
    "audit": ("onnx_explain.cli.audit", "audit", "Deployment audit: parity, LRP coverage, methods x metrics, HTML report."),
    "diff": ("onnx_explain.cli.diff", "diff", "Drift between two versions of a model: predictions and explanations."),
    "concepts": ("onnx_explain.cli.concepts", "concepts", "What a layer's channels stand for: the inputs that use each most, with heatmaps."),
    "export": ("onnx_explain.cli.export", "export", "Export a PyTorch, Keras or scikit-learn model to ONNX and verify it."),
    "demo": ("onnx_explain.cli.demo", "demo", "Explain and evaluate the bundled model on the bundled samples."),
}  # fmt: skip


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        from .common import handle_errors

        return handle_errors(super().invoke)(ctx)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnx-explain")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error (for bug reports).")
def main(debug):
    """Explain ONNX models: gradients and LRP on a converted torch graph, masking metrics on onnxruntime.

    \b
    Examples:
      onnx-explain demo
      onnx-explain info models/digits.onnx
      onnx-explain explain models/digits.onnx models/samples -m lrp --out out/lrp
      onnx-explain evaluate models/digits.onnx -a out/lrp --metric pixel_flipping --out out/lrp.json

    \b
    Exit codes: 0 ok, 1 some items failed, 2 a usage, input or model error (one line on stderr),
    3 an unexpected error in onnx-explain (one line; --debug shows the traceback).
    """
    from .common import DEBUG

    DEBUG["on"] = debug


if __name__ == "__main__":  # pragma: no cover
    main()

"""``python -m onnx_explain``: the same as the ``onnx-explain`` command."""

from .cli import main

main(prog_name="onnx-explain")

"""Data shipped inside the package, so that ``onnx-explain demo`` runs from any folder after ``pip install``.

``digits.onnx`` and ``digits.npy`` are byte-identical copies of ``models/digits.onnx`` and
``models/samples/digits.npy``: ``models/build.py`` rebuilds the originals, and a test fails when the
copies here drift from them.
"""

from __future__ import annotations

from pathlib import Path

#: the files of this folder that the demo uses, and their originals in the repository's ``models/``
BUNDLED = {"digits.onnx": "digits.onnx", "digits.npy": "samples/digits.npy"}


def bundled(name: str) -> Path:
    """Path of a bundled file (``'digits.onnx'`` or ``'digits.npy'``) inside the installed package.

    pip installs a wheel unpacked, so the file is a plain file next to this module.
    """
    if name not in BUNDLED:
        raise KeyError(f"no bundled file {name!r}; bundled: {', '.join(sorted(BUNDLED))}")
    return Path(__file__).resolve().with_name(name)

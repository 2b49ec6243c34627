"""The code in README.md and in the documentation's Markdown pages (docs/**/*.md) runs as written.

Every fenced block whose info string is exactly ``python`` is one test. A block must stand alone: it runs in a
fresh namespace, after the param store is cleared and the seed set (``conftest.py``), so it needs its own imports
and data; nothing carries over from the blocks before it. Fences that are not meant to run say so: ``bash`` for
commands, ``text`` for printed output, and ``{code-block} python`` (MyST) for a fragment shown but not run.

**Sizes.** A block is written with the sizes a user would run (50 epochs, 14,500 AIS temperatures, ...). The test
shrinks them through :data:`SIZES`, regex replacements applied to the block's text before it runs, so that the
whole file takes seconds. Only keyword arguments are replaced (``epochs=50`` becomes ``epochs=1``); a new block keeps
its run time small by passing its long-running sizes as one of these keywords. Every block is run once at full size
by hand before it is committed (``python tests/test_readme.py --full FILE`` runs one file's blocks as written).

A block that reads the binarized-MNIST file (``binarized_mnist.npz``) is skipped where the file is missing; prefer the
embedded digits (``load_digits``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]

#: Regex replacements (pattern, replacement: a string or a function of the match, as for ``re.sub``) applied in
#: order to each block's text: the test-time sizes.
SIZES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"\bepochs=\[[\d_, ]+\]", lambda m: re.sub(r"\d[\d_]*", "1", m.group())),  # per-layer epochs: 1 each
    (r"\bepochs=\d[\d_]*", "epochs=1"),
    (r"\bnum_betas=\d[\d_]*", "num_betas=100"),  # AIS temperatures
    (r"\bnum_samples=\d[\d_]*", "num_samples=20"),  # draws, importance samples, MCMC samples
    (r"\bwarmup_steps=\d[\d_]*", "warmup_steps=20"),  # MCMC warm-up
    (r"\bnum_steps=\d[\d_]*", "num_steps=50"),  # SVI steps in a hand-written loop
    (r"\bnum_permutations=\d[\d_]*", "num_permutations=50"),  # two-sample test
]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
MNIST = "binarized_mnist.npz"


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """The ``python`` blocks of a Markdown file: (line of the opening fence, code)."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("info").strip() != "python":
            continue
        indent = len(match.group("indent"))
        code = "".join(line[indent:] for line in match.group("body").splitlines(keepends=True))
        blocks.append((text.count("\n", 0, match.start()) + 1, code))
    return blocks


def shrink(code: str) -> str:
    for pattern, replacement in SIZES:
        code = re.sub(pattern, replacement, code)
    return code


def run_block(path: Path, line: int, code: str) -> dict:
    """Exec ``code`` in a fresh namespace; tracebacks point at the Markdown file's lines."""
    namespace = {"__name__": "__main__", "__file__": str(path)}
    exec(compile("\n" * line + code, str(path), "exec"), namespace)
    return namespace


CASES = [
    pytest.param(path, line, code, id=f"{path.relative_to(ROOT)}:{line}")
    for path in FILES
    for line, code in python_blocks(path)
]


@pytest.mark.parametrize("path, line, code", CASES)
def test_block_runs(path, line, code, monkeypatch, tmp_path):
    if MNIST in code:
        found = [p for p in re.findall(r"[\"']([^\"']*" + re.escape(MNIST) + r")[\"']", code) if os.path.exists(p)]
        if not found:
            pytest.skip(f"needs the binarized-MNIST file ({MNIST}), which is not on this machine")
    pytest.importorskip("matplotlib").use("Agg")  # blocks that plot (az.plot_ppc) draw off screen
    monkeypatch.chdir(tmp_path)  # anything a block writes lands in a temporary folder
    try:
        run_block(path, line, shrink(code))
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")


def test_blocks_found():
    """The extraction sees the README's blocks (a renamed fence would silently drop them from the tests)."""
    assert len(python_blocks(ROOT / "README.md")) >= 2
    assert len(CASES) >= 8


def test_readme_test_command_is_the_ci_command():
    """CI runs the README's test command; both keep the same line."""
    command = 'python -m pip install -q -e ".[test]" && python -m pytest'
    assert command in (ROOT / "README.md").read_text(encoding="utf-8")
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_shrink_replaces_keyword_sizes_only():
    code = "train(svi, x, epochs=50)\npretrain(x, epochs=[20, 20, 5])\nais(rbm, num_betas=14_500)\nepochs = 50\n"
    want = "train(svi, x, epochs=1)\npretrain(x, epochs=[1, 1, 1])\nais(rbm, num_betas=100)\nepochs = 50\n"
    assert shrink(code) == want


if __name__ == "__main__":  # python tests/test_readme.py --full FILE [LINE]: run blocks at their written sizes
    import argparse

    import pyro
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="sizes as written (default: the test's SIZES)")
    parser.add_argument("file", type=Path)
    parser.add_argument("line", type=int, nargs="?", help="only the block that opens on this line")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for line, code in python_blocks(args.file.resolve()):
        if args.line is None or line == args.line:
            print(f"--- {args.file}:{line}", file=sys.stderr, flush=True)
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            run_block(args.file.resolve(), line, code if args.full else shrink(code))

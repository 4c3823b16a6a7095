"""Train the quick preset once and print a SHA-256 of its weights.

A restructuring that must not change what training computes (part 16) runs this before and after:
the same digest on the same CPU means the same weights, bit for bit. Digests differ between CPU
kinds (oneDNN rounds differently with and without AMX), so compare on one machine.

    python benchmarks/weights_digest.py [MNIST_DIR]
"""

from __future__ import annotations

import platform
import sys

import torch

from cnnlab.config import preset
from cnnlab.data import load_split
from cnnlab.model import weights_digest
from cnnlab.train import train


def main() -> None:
    split = load_split(data_dir=sys.argv[1] if len(sys.argv) > 1 else None)
    result = train(preset("quick"), None, split=split, progress=False, log=lambda _: None, figures=False)
    print(f"{weights_digest(result.model)}  quick preset, seed {result.config.seed}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")


if __name__ == "__main__":
    main()

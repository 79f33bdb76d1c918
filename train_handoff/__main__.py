"""`python -m train_handoff CONFIG [--resume]`: the trainer's entry point under torchrun, e.g.

    torchrun --nproc-per-node 8 -m train_handoff configs/phi3-mini.yaml
"""

import sys

from pipeline.cli import main

sys.exit(main(["train", *sys.argv[1:]]))

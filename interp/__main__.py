"""`python -m interp ...`: the `interp` command, e.g. `torchrun --nproc-per-node 2 -m interp sae train ...`."""

from interp.cli import run

if __name__ == "__main__":
    run()

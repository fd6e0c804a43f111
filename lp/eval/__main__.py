from lp.errors import run_cli
from lp.eval.cli import main

if __name__ == "__main__":
    run_cli(main)

"""`python -m bench`: run the benchmark (see bench/bench.py)."""

from bench.bench import main

if __name__ == "__main__":
    main()

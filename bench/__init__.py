"""Side-by-side benchmarks of skillserve: every figure is a ratio measured in one run (`python -m bench`)."""

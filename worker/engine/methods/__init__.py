"""Edit methods beyond the paper's closed form (which lives in solve.py / keys.py): one module per method."""

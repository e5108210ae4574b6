"""lingua-edit benchmark suite: our sparse edit against its peers on the same split (see bench/README.md)."""

"""Reports built from a finished (or running) training output folder: example montages and loss graphs."""

"""quantir.backends: legalize and emit IR graphs for each target runtime."""

"""Sources: where raw records come from, with their position for checkpoints."""

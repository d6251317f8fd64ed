"""Result files, W&B helpers and checkpoints."""

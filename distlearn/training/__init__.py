"""The training loop: the learner, its batches and padding, checkpoints and resume, and the records it returns."""

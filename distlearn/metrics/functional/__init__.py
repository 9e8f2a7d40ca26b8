"""The math of the metrics as functions of tensors: input checks, counts and the scores read from them."""

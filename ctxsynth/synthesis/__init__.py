"""Stage synthesize: the generator writes a background document for every seed (or, as the paper's baseline,
an instruction for every human document); outputs are verified and cached by content hash."""

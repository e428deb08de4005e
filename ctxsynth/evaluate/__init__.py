"""Stage evaluate: LongBench-style tasks and needle-in-a-haystack scored through lm-eval, base and fine-tuned."""

"""Stage mix: each seed's document hidden among documents written for other seeds, in the task's LongBench prompt;
plus general SFT data and the pilot study's training needles."""

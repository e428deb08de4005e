"""`ctxsynth doctor`: every CUDA path of the pipeline run for a few steps through the stages' own code, on small
LLaMA-shaped models built from configs (random weights: no download, no network), each checking a numeric property,
not only that it ran. On CPU the checks with a CPU form run and the rest are skipped by name.

    checks.py       the result of one check (pass, fail with its numbers, skipped with what is missing) and the run
    models.py       the small models and the device and dtype each check runs in
    training.py     LoRA, full fine-tuning and nf4 QLoRA through the finetune stage's trainer: loss falls, the saved
                    output reloads to the same logits
    numerics.py     packing against one-by-one samples per attention kernel, packed memory growth, continuous
                    batching against one-at-a-time generate, a merged adapter against the unmerged one
    engines.py      vLLM and DeepSpeed ZeRO-3, when installed
    run.py          the command: a table, metrics/doctor.json, exit 1 on any fail
"""

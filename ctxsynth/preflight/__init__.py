"""Checks before any expensive work, in seconds: `params` (every params.yaml section through its settings class and
every file a parameter names: `ctxsynth preflight`, the pipeline's first stage) and `rows` (each experiment row's
resolved params against what its run will need: `ctxsynth experiments preflight`), with the row checks' estimates in
`memory`, `eval_cost`, `environment` and the hub models' facts in `model_facts.yaml`."""

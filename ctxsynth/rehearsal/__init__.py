"""Tiny stand-ins for the paper scale, so its rows run end to end on a CPU (`make paper-<group> SCALE=rehearsal`).

No GPU, hub or paid API is available here, so the paper-scale code paths are proven by running them with stand-ins
that keep each real interface and data layout and shrink only sizes and model ids: a tiny LLaMA base model built
from a config (tiny_model), fixtures in the paper's seed-release, LongBench and hub-dataset layouts (fixtures), and
fake OpenAI servers for the Batch API and a `vllm serve` fleet (fake_openai). Tools, not a pipeline stage: no stage
imports this package.
"""

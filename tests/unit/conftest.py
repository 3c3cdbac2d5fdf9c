import pytest
import torch


@pytest.fixture
def float64_by_default():
    """Exact comparisons need float64; restored afterwards so other test modules see torch's default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Every available device: CPU always, CUDA where present (with TF32 off, so float32 means float32).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
if torch.cuda.is_available():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)

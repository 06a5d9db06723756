"""Fixtures of the command line tests."""

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small model in the official layout, saved as an official `.pth`."""
    import torch

    from support import fixtures as tp
    from support.reference import official

    ref = official.make_sam(
        tp.ENCODER, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2
    )
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth"
    torch.save(ref.state_dict(), path)
    return path

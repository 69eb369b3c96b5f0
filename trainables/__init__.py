"""Worker-side code: everything that runs inside a training process.

Plain PyTorch + torch.distributed; importable without Ray so the same
training function runs under Ray Train, under torchrun, or in one process.
"""

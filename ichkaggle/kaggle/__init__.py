"""Kaggle: this machine's side (the API client, push/follow, the resumable pipeline, the plan, the rehearsal) and what the kernels run there (kernel, inputs), which share only ``contract``."""

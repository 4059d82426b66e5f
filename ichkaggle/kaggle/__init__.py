"""Kaggle: this machine's side (the client, push/follow, the pipeline, the plan, the rehearsal)
and what the kernels run there (``kernel``, ``inputs``); the two share only ``contract``."""

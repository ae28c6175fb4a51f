"""The gaudi_fp8 backend: an Intel Neural Compressor FP8 checkpoint for Gaudi 2/3 (see `backend.py`)."""

"""live-puppet: real-time webcam puppeteering of portraits."""

import os

# One BLAS thread: the pipeline already keeps both cores busy with its own threads (tracking,
# rendering, encoding), and OpenBLAS's spinning workers fighting them stalled SciPy's Delaunay
# for seconds under load (render p90 9 s at load 6; 10 ms with one thread). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

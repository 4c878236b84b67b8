"""megaclass: training classifiers and embedding models with millions to hundreds of millions of
classes. See ``ClassifierHead``."""

import os

# Transparent huge pages for PyTorch's large CPU allocations (read once, before torch's first
# allocation, so only when megaclass is imported first). A step allocates tens of MB of class
# rows; with 4 KB pages their page faults cost 3x the copy itself (index_select of 100k x 128
# rows: 27 ms -> 9 ms). Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from megaclass import margins, optim, samplers
from megaclass.heads import ClassifierHead, HeadOutput

__version__ = "0.1.0"

__all__ = ["ClassifierHead", "HeadOutput", "__version__", "margins", "optim", "samplers"]

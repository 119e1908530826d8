"""ebsengine: EBS-style volumes and incremental snapshots on one machine, for real.

>>> import ebsengine
>>> with ebsengine.Engine("/tmp/store") as eng:          # doctest: +SKIP
...     vol = eng.create_volume(size_gib=8, volume_type="gp3")

See README.md for the whole API; ``layout.py`` for the on-disk format.
"""

from .block.device import Device
from .engine import Engine, Transaction, default_store_path
from .errors import EbsError
from .layout import BLOCK_SIZE, CHUNK_SIZE
from .model import FsckReport, Snapshot, Usage, Volume

__version__ = "0.1.0"

__all__ = ["Engine", "Transaction", "EbsError", "Volume", "Snapshot", "Usage", "FsckReport",
           "Device", "BLOCK_SIZE", "CHUNK_SIZE", "default_store_path", "__version__"]

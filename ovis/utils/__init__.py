r"""Small shared utilities (atomic file writes)."""
from ovis.utils.files import atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir"]

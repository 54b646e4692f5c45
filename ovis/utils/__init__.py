r"""Small shared utilities: atomic file writes, the process's memory settings."""
from ovis.utils.files import atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir
from ovis.utils.memory import retain_freed_memory

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir", "retain_freed_memory"]

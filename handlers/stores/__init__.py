"""Object stores: a local directory and S3, behind one protocol."""

from handlers.stores.base import ObjectInfo, ObjectStore, check_key
from handlers.stores.factory import S3Options, open_store

__all__ = ["ObjectInfo", "ObjectStore", "S3Options", "check_key", "open_store"]

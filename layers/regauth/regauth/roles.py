"""The role map of each policy version, cached in memory for IAM sign-in.

A role map (ARN patterns to `role:NAME`) belongs to one policy version and is stored
with it in `policy#version#<n>`. A token request reads `policy#current` together with
the principal's items anyway, so the service compares that version number with the
cached map's and reloads the map only when they differ. In steady state IAM sign-in
therefore costs no read beyond the one every token request makes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from regauth.iam import RoleMap

# Versions whose maps are kept. A rollback flips between recent versions, and a few
# entries cover that without reloading.
MAX_CACHED_VERSIONS = 4


class RoleMapStore(Protocol):
    """Reads the active version number and a version's role map. `DynamoStore` is one."""

    def get_policy_seq(self) -> int | None: ...

    def get_role_map(self, version: int) -> RoleMap: ...


@dataclass(frozen=True, slots=True)
class VersionedRoleMap:
    """A role map and the policy version it belongs to (None: no policy applied)."""

    version: int | None
    role_map: RoleMap


class RoleMapCache:
    """Role maps by policy version, with the most recently loaded one as the default."""

    def __init__(self, store: RoleMapStore, *, max_versions: int = MAX_CACHED_VERSIONS) -> None:
        self._store = store
        self._max_versions = max_versions
        self._maps: OrderedDict[int, RoleMap] = OrderedDict()
        self._latest: VersionedRoleMap | None = None
        self._lock = threading.Lock()

    def latest(self) -> VersionedRoleMap:
        """Return the map last used, loading the active version's on first use."""
        with self._lock:
            latest = self._latest
        return latest if latest is not None else self.refresh()

    def refresh(self) -> VersionedRoleMap:
        """Read the active version number and return its map, loading it if needed."""
        return self.for_version(self._store.get_policy_seq())

    def for_version(self, version: int | None) -> VersionedRoleMap:
        """Return the map of `version` and make it the default for `latest`."""
        if version is None:
            result = VersionedRoleMap(None, RoleMap())
        else:
            with self._lock:
                cached = self._maps.get(version)
            if cached is None:
                # A version's role map never changes once applied, so a loaded map is
                # valid for as long as the version exists.
                cached = self._store.get_role_map(version)
            result = VersionedRoleMap(version, cached)

        with self._lock:
            if version is not None:
                self._maps[version] = result.role_map
                self._maps.move_to_end(version)
                while len(self._maps) > self._max_versions:
                    self._maps.popitem(last=False)
            self._latest = result
        return result

"""Code packages: the tarball a run stores its flow's code in, with its INFO and the flow's script (MetaflowCode)."""
from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .context import current_provider
from .datastore import FlowDatastore, confine_root, root_from_blob_url
from .exceptions import MetaflowInternalError

if TYPE_CHECKING:  # imported when a package is first read
    import tarfile
    from tempfile import TemporaryDirectory


class MetaflowCode:
    """A code package: `path`, `info`, `script_name`, `flowspec`, `tarball`, `extract()`."""

    def __init__(self, flow_name: str, code_package: str):
        info = json.loads(code_package)
        self._path = info["location"]
        self._ds_type = info["ds_type"]
        self._sha = info["sha"]
        self._package_metadata = json.loads(
            info.get("metadata") or '{"version": 0, "archive_format": "tgz", "mfcontent_version": 0}'
        )
        if self._package_metadata.get("archive_format", "tgz") != "tgz":
            raise MetaflowInternalError("Unsupported code package format %s" % self._package_metadata)
        import tarfile

        root = confine_root(root_from_blob_url(self._path), current_provider())
        self._blob = FlowDatastore.at(root, flow_name).load_raw_blob(self._sha)
        self._tarball: Optional["tarfile.TarFile"] = None
        with tarfile.open(fileobj=io.BytesIO(self._blob), mode="r:gz") as tar:
            names = set(tar.getnames())
            self._v1 = ".mf_install" in names
            info_member = ".mf_meta/INFO" if self._v1 else "INFO"
            if info_member not in names:
                raise MetaflowInternalError("Code package metadata is invalid.")
            self._info = json.loads(tar.extractfile(info_member).read())
            script = self._info["script"]
            self._flowspec = tar.extractfile(script).read() if script in names else None

    @property
    def path(self) -> str:
        return self._path

    @property
    def info(self) -> Dict[str, Any]:
        return self._info

    @property
    def flowspec(self) -> Optional[bytes]:
        return self._flowspec

    @property
    def script_name(self) -> str:
        return self._info["script"]

    @property
    def tarball(self) -> "tarfile.TarFile":
        import tarfile

        if self._tarball is None:
            self._tarball = tarfile.open(fileobj=io.BytesIO(self._blob), mode="r:gz")
        return self._tarball

    def is_user_file(self, name: str) -> bool:
        """Whether an archive member is user code (what `extract()` extracts), not Metaflow's own files."""
        # As Metaflow's extract(USER_CONTENT) does: v1 packages hold Metaflow's code under .mf_code/ (its
        # .mf_meta/ files and the .mf_install marker are extracted too); from v0 packages it extracts everything.
        return not (self._v1 and name.startswith(".mf_code"))

    def user_members(self) -> List["tarfile.TarInfo"]:
        return [m for m in self.tarball.getmembers() if self.is_user_file(m.name)]

    def extract(self) -> "TemporaryDirectory":
        """The user files in a new temporary directory (unsafe paths and links in the archive are refused)."""
        from tempfile import TemporaryDirectory

        tmp = TemporaryDirectory()
        self.tarball.extractall(tmp.name, members=self.user_members(), filter="data")
        return tmp

    def __str__(self) -> str:
        return "<MetaflowCode: %s>" % self._info["script"]

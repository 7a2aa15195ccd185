"""The datastore of the mount's export/card/code tests: ExportsFlow runs made by real Metaflow (see
tests/flows/exportsflow.py), built once and cached like the standard datastore (tests/support/datastores.py).

Scenarios (the manifest's `runs`):
  first, second  two runs with the same code package, a matplotlib figure, a dict whose value.json fails (keys 1
                 and "1"), a default card and a blank card `summary`
  crafted        a run from a copy of the flow file whose stored code package was then rewritten to also hold
                 members that must never be served (CRAFTED_UNSAFE_MEMBERS) next to one that must (CRAFTED_SAFE_FILE)
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from tests.support import datastores

FLOW_FILE = "exportsflow.py"
CODE_PACKAGE_ENV = {"METAFLOW_FEAT_ALWAYS_UPLOAD_CODE_PACKAGE": "1"}
EXPORTS_SCENARIOS = {
    "first": "ExportsFlow by alice with a code package: matplotlib figure, clashing JSON keys, default card, blank "
             "card with id summary",
    "second": "the same flow again (the same code package): two runs whose code/ trees diff equal",
    "crafted": "ExportsFlow run from a copy of its file; its code package then rewritten with unsafe members added",
}
#: member name -> what it is, in the crafted package; none of them may appear under code/
CRAFTED_UNSAFE_MEMBERS = {
    "../escaped.txt": "a file above the package root",
    "sub/../../up.txt": "a file above the root through a subdirectory",
    "/absolute.txt": "an absolute path",
    "link_to_passwd": "a symbolic link to /etc/passwd",
    "hard_link": "a hard link to the flow file",
    "null_device": "a character device",
    "a_fifo": "a FIFO",
}
#: a regular member with a `./` prefix and a subdirectory: served as `dot/inside.txt`
CRAFTED_SAFE_FILE = ("./dot/inside.txt", b"served\n")


def _code_package_path(root_parent: Path, run_id: str) -> Path:
    """The blob file of a run's code package (the location in its `code-package` metadata)."""
    event_file = next((root_parent / ".metaflow" / "ExportsFlow" / run_id).glob("*/*/_meta/sysmeta_code-package_*"))
    return Path(json.loads(json.loads(event_file.read_text())["value"])["location"])


def _add_unsafe_members(package: Path) -> None:
    """Rewrite a code package (a raw .tgz blob) with CRAFTED_UNSAFE_MEMBERS and CRAFTED_SAFE_FILE added."""
    with tarfile.open(package, mode="r:gz") as original:
        members = [(member, original.extractfile(member).read() if member.isreg() else None)
                   for member in original.getmembers()]
    flow_member = next(member.name for member, _ in members if member.name.endswith(FLOW_FILE))

    def regular(name: str, data: bytes) -> tuple:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        return info, data

    def special(name: str, kind: bytes, target: str = "") -> tuple:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info, None

    members += [
        regular("../escaped.txt", b"escaped\n"),
        regular("sub/../../up.txt", b"up\n"),
        regular("/absolute.txt", b"absolute\n"),
        special("link_to_passwd", tarfile.SYMTYPE, "/etc/passwd"),
        special("hard_link", tarfile.LNKTYPE, flow_member),
        special("null_device", tarfile.CHRTYPE),
        special("a_fifo", tarfile.FIFOTYPE),
        regular(*CRAFTED_SAFE_FILE),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as crafted:
        for member, data in members:
            crafted.addfile(member, io.BytesIO(data) if data is not None else None)
    package.write_bytes(buffer.getvalue())


def _build(parent: Path) -> dict:
    runs = {}
    for scenario in ("first", "second"):
        run_id = datastores.run_flow(FLOW_FILE, ["run"], parent, env=CODE_PACKAGE_ENV)
        runs[scenario] = datastores._record("ExportsFlow", run_id, "alice")
    copy_dir = parent / "crafted-flow"
    copy_dir.mkdir()
    shutil.copy(datastores.flow_path(FLOW_FILE), copy_dir / FLOW_FILE)
    run_id = datastores.run_flow(str(copy_dir / FLOW_FILE), ["run"], parent, env=CODE_PACKAGE_ENV)
    runs["crafted"] = datastores._record("ExportsFlow", run_id, "alice")
    _add_unsafe_members(_code_package_path(parent, run_id))
    assert set(runs) == set(EXPORTS_SCENARIOS)
    return runs


def build_exports_datastore() -> Path:
    """The directory holding this datastore's `.metaflow` and `manifest.json` (built on first use)."""
    return datastores._cached_build("exports", EXPORTS_SCENARIOS, [FLOW_FILE], _build)


if __name__ == "__main__":
    built = build_exports_datastore()
    print(built)
    print(json.dumps(datastores.load_manifest(built)["runs"], indent=2))

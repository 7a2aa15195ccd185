"""The test-datastore builder: a crashed build is never reused, a finished one is never rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import datastores


def test_crashed_build_is_rebuilt_and_finished_build_is_reused(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datastores, "TESTDATA_DIR", tmp_path)
    builds = []

    def crash(parent: Path) -> dict:
        (parent / "half-written").write_text("x")
        raise RuntimeError("flow run failed")

    def build(parent: Path) -> dict:
        builds.append(parent)
        assert not (parent / "half-written").exists(), "leftovers of the crashed build were kept"
        return {"only": {"run_id": "1"}}

    with pytest.raises(RuntimeError):
        datastores._cached_build("unit", {"n": 1}, ["helloflow.py"], crash)
    first = datastores._cached_build("unit", {"n": 1}, ["helloflow.py"], build)
    again = datastores._cached_build("unit", {"n": 1}, ["helloflow.py"], build)
    assert first == again and builds == [first]
    assert datastores.load_manifest(first)["runs"] == {"only": {"run_id": "1"}}
    other = datastores._cached_build("unit", {"n": 2}, ["helloflow.py"], build)
    assert other != first and len(builds) == 2


def test_manifest_names_every_scenario(manifest: dict, local_root: Path) -> None:
    assert set(manifest["runs"]) == set(datastores.STANDARD_SCENARIOS)
    for record in manifest["runs"].values():
        run_dir = local_root / ".metaflow" / record["flow"] / record["run_id"]
        assert (run_dir / "_meta" / "_self.json").is_file(), record

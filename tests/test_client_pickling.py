"""Client objects in pickles: Metaflow's pickles of its client objects (`metaflow.client.core.Run`, ...) load as
ours, which the unpickler finds through the classes the object model registers (client/pickled_classes.py); ours
pickle under `client.core`, and the unpickler's classes are named `client.unpickle...`, as before both modules
were split."""

from __future__ import annotations

import pickle

import pytest


@pytest.mark.parametrize("trusted", [True, False])
def test_metaflow_client_objects_unpickle_as_ours(clients: dict, manifest: dict, trusted: bool) -> None:
    from client import unpickle

    mf, ours = clients["metaflow"], clients["client"]
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    task = run["start"].task
    for theirs in (mf.Flow(run.parent.id), run, run["start"], task, task["alpha"]):
        data = pickle.dumps(theirs)
        name = type(theirs).__name__
        assert b"metaflow.client.core" in data and unpickle.allowed("metaflow.client.core", name)
        loaded = unpickle.loads(data, trusted=trusted)
        assert type(loaded) is getattr(ours, name) and loaded.pathspec == theirs.pathspec


def test_our_objects_pickle_under_client_core(clients: dict, manifest: dict) -> None:
    ours = clients["client"]
    run = ours.Run(manifest["runs"]["kitchen"]["pathspec"])
    for obj in (run, run["start"], run["start"].task, run["start"].task["alpha"]):
        assert type(obj).__module__ == "client.core" and repr(obj).startswith(type(obj).__name__ + "(")
        copy = pickle.loads(pickle.dumps(obj))
        assert type(copy) is type(obj) and copy.pathspec == obj.pathspec


def test_unpickler_classes_keep_the_package_name() -> None:
    # repr.txt of a refused class shows its placeholder's name; stand-ins pickle under client.unpickle
    from collections import ChainMap

    from client import unpickle

    assert repr(unpickle.loads(pickle.dumps(ChainMap), trusted=False)) == "<class 'client.unpickle.ChainMap'>"
    standins = (unpickle.MetaflowExceptionWrapper, unpickle.ForeachFrame, unpickle.IncludedFile)
    assert {cls.__module__ for cls in standins + (unpickle.UntrustedObject,)} == {"client.unpickle"}
    wrapper = pickle.loads(pickle.dumps(unpickle.MetaflowExceptionWrapper(ValueError("x"))))
    assert type(wrapper) is unpickle.MetaflowExceptionWrapper and wrapper.exception == "x"

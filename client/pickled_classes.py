"""The client's classes as Metaflow's pickles name them (`metaflow.client.core.Run`, ...), registered by the object
model, so that the unpickler loads such a pickle as our class without importing the object model (and the object
model does not import the unpickler, and pickle with it, until a value is loaded)."""
from __future__ import annotations

from typing import Dict

#: the module Metaflow's pickles name its client classes under
METAFLOW_CLIENT_MODULE = "metaflow.client.core"
#: class name -> our class, filled by `register_client_classes`
CLIENT_CLASSES: Dict[str, type] = {}


def register_client_classes(classes: Dict[str, type]) -> None:
    """Load pickled `metaflow.client.core.<name>` objects as `classes[name]`."""
    CLIENT_CLASSES.update(classes)

"""The mount's path tree: path -> node, plain Python (no FUSE import), over the `client` object model.

Layout (see README): <Flow>/{latest,latest_successful,tags/<tag>/<run>,<run>/{run.json,parameters.json,code/,
<step>/{step.json,<task>/{task.json,metadata.json,stdout.log,stderr.log,exception.txt,cards/,attempts/<n>/,
<artifact>/{repr.txt,data.pickle,meta.json,value.*|content}}}}}. Names starting with `_` (the `_parameters` step,
internal artifacts) are not listed but resolve by name. A hidden `/.mffs/` directory holds control files registered
by the front end (e.g. `stats`).

One module per responsibility, each saying the policies it keeps:

  nodes.py     Stat, Entry, the node, file and directory bases, readers, client errors -> errno (sizes, errors)
  runs.py      the root, flows, tags, runs and steps
  tasks.py     tasks, attempts and artifacts (the unpickling policy of repr.txt and the exports)
  code.py      code/: the code package's user files
  cards.py     cards/: the task's cards under readable names
  settings.py  TreeSettings: what a tree shows and how, as one value
  tree.py      the Tree: lookups, listings and their caches (stability), the sandbox for untrusted values
"""
from .cards import CARDS_DIR, card_file_names
from .code import CODE_DIR, code_member_parts
from .nodes import DIR, FILE, LINK, BytesReader, Dir, Entry, File, Node, Reader, Stat, StreamReader, Symlink
from .nodes import client_errors, join, normalize
from .runs import StepDir
from .settings import KEEP_NAMESPACE, TreeSettings
from .tasks import ATTEMPTS_DIR, TaskDir
from .tree import CONTROL_DIR, Tree, collect_garbage_for_caches

__all__ = [
    "ATTEMPTS_DIR", "CARDS_DIR", "CODE_DIR", "CONTROL_DIR", "DIR", "FILE", "KEEP_NAMESPACE", "LINK", "BytesReader",
    "Dir", "Entry", "File", "Node", "Reader", "Stat", "StepDir", "StreamReader", "Symlink", "TaskDir", "Tree",
    "TreeSettings", "card_file_names", "client_errors", "code_member_parts", "collect_garbage_for_caches", "join",
    "normalize",
]

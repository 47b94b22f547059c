"""Hierarchical subchat: a persisted conversation tree over the registered model.

    store = kk.subchat.open_store()
    root = store.new_conversation("Optimise softmax")
    reply = root.reply(client, "How should I tile this?")   # or client.generate_response(root, ...)
    sub = root.branch(from_message=reply, title="Shared-memory details")
    sub.context()          # what the model would be sent for sub's next turn
"""
from kaggle_kit.subchat.store import Message, Node, SubchatStore, default_store_path, open_store  # noqa: F401


def widget(store, client=None):
    """The notebook UI (ipywidgets): the tree, the selected node's messages, an input box.

    Without ipywidgets (Kaggle ships it; a bare Jupyter may not) the run goes on: the tree is
    printed instead, with how to get the interactive view.
    """
    try:
        from kaggle_kit.subchat.ui import SubchatWidget
    except ModuleNotFoundError as e:
        if e.name != "ipywidgets":
            raise
        return _tree_text(store) + "\n(pip install ipywidgets for the interactive view: open, read, branch)"
    return SubchatWidget(store, client).ui


class _Text(str):
    def __repr__(self):  # a notebook shows the text itself, not its quoted repr
        return str(self)


def _tree_text(store) -> "_Text":
    lines = []

    def walk(tree, depth=0):
        lines.append("  " * depth + f"- {tree['title']} ({tree['message_count']} messages)")
        for child in tree["children"]:
            walk(child, depth + 1)

    for root in store.conversations():
        walk(store.tree(root.id))
    return _Text("\n".join(lines) or "(no conversations yet)")

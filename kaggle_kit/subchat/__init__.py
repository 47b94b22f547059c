"""Hierarchical subchat: a persisted conversation tree over the registered model.

    store = kk.subchat.open_store()
    root = store.new_conversation("Optimise softmax")
    reply = client.generate_response(root, "How should I tile this?")
    sub = root.branch(from_message=reply, title="Shared-memory details")
    sub.context()          # what the model would be sent for sub's next turn
"""
from kaggle_kit.subchat.store import Message, Node, SubchatStore, default_store_path, open_store  # noqa: F401


def widget(store, client=None):
    """The notebook UI (ipywidgets): the tree, the selected node's messages, an input box."""
    from kaggle_kit.subchat.widget import SubchatWidget

    return SubchatWidget(store, client).ui

"""HTML views shared by the widgets, the service and the notebooks (stdlib only, nothing fetched):
`markdown` renders chat messages with their code, `step_tree` renders a TTS search tree."""

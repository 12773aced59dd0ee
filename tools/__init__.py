"""Development tools: the usage simulator and the local billing sink.

Nothing here runs in production and nothing in `libs` or `services` imports it; the `tollgate`
command finds these tools through `TOOLS` (see `libs.service.spec`). The production image
leaves this package out.
"""

"""Front ends of edge-audit: the Textual app and the command line, both thin callers of the core."""

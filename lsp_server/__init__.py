"""lsp_server: see ../DESIGN.md (lands with its own issue)."""

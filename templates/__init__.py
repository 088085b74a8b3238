"""Templates of the page (shipped as package data; the emulator ships its own in tornado_signin/emulator/templates)."""

"""Templates of the page and of the Google emulator (shipped as package data)."""

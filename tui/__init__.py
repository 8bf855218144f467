"""The Textual operator console. Not built yet: see the console issue (`issues show 5`)."""

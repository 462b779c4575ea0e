"""Files on disk: atomic writes, what a killed process leaves behind, the project lock."""

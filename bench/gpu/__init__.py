"""The GPU procedure (README.md here): pack the embedded model, run a sert config on the lent machine."""

# Shortcuts for the two commands in README.md.
.PHONY: demo test lint
demo:
	bash tools/demo.sh
test:
	bash tools/test.sh
lint:
	.venv/bin/ruff check lmhpc tests tools bench jobs

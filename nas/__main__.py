"""`python -m nas` is the `nas` command."""

from .cli.main import main

main()

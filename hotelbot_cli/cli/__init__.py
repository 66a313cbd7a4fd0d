"""The Typer/Rich command-line interface: parses, calls one library function, renders."""

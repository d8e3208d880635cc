"""The command line: a thin skin over the library, named the same way."""

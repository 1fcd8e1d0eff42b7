"""One module per `vididi <stage>` command, each with one entry point `main`.

Stage modules import library code and `vididi.layout`, never each other (tests/test_structure.py).
"""

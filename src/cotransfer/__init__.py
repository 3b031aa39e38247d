"""cotransfer: do chain-of-thought explanations generalize across large reasoning models?"""

__version__ = "0.1.0"

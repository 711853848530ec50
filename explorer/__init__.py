"""Gemma Scope Explorer: explore the features that sparse autoencoders find in Gemma models.

Importing the package is cheap: models, SAEs and Gradio load only when a command needs them.
"""

__version__ = "0.1.0"

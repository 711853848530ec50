"""The batch side of Gemma Scope Explorer: corpus, SAE training and the feature store.

``python -m precompute --help`` lists the commands. Importing the package is cheap: nothing heavy
(torch, datasets, models) is imported until a command needs it.
"""

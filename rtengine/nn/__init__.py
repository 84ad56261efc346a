"""Torch modules: streaming convolutions and the networks and losses of the models."""
